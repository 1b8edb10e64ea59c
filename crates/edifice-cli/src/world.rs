//! Where this process stands in a run: alone, or one rank of `mpirun`
//! (`--distributed`, with the `dist` feature). Only rank 0 writes files
//! and prints progress; decisions every rank must share (stop on Ctrl-C)
//! are agreed on.

use anyhow::Result;

/// Seconds a rank waits for another before the job is ended
/// (`EDIFICE_DIST_TIMEOUT` overrides).
#[cfg(feature = "dist")]
const TIMEOUT_S: f64 = 120.0;

/// This process in its run.
pub struct World {
    #[cfg(feature = "dist")]
    comm: Option<std::sync::Arc<edifice_dist::Comm>>,
}

impl World {
    /// A process on its own.
    pub fn single() -> Self {
        World {
            #[cfg(feature = "dist")]
            comm: None,
        }
    }

    /// Alone, or (`distributed`) one rank of the MPI job that started it.
    pub fn new(distributed: bool) -> Result<Self> {
        if !distributed {
            return Ok(World::single());
        }
        #[cfg(feature = "dist")]
        {
            let timeout = std::env::var("EDIFICE_DIST_TIMEOUT")
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|t| t.is_finite() && *t > 0.0)
                .unwrap_or(TIMEOUT_S);
            let comm = edifice_dist::Comm::init(std::time::Duration::from_secs_f64(timeout))?;
            Ok(World {
                comm: Some(std::sync::Arc::new(comm)),
            })
        }
        #[cfg(not(feature = "dist"))]
        anyhow::bail!("--distributed needs edifice built with `--features dist` (Open MPI)")
    }

    /// The MPI world, when distributed.
    #[cfg(feature = "dist")]
    pub fn comm(&self) -> Option<&std::sync::Arc<edifice_dist::Comm>> {
        self.comm.as_ref()
    }

    /// Whether this process writes the run's files and progress.
    pub fn is_root(&self) -> bool {
        #[cfg(feature = "dist")]
        if let Some(comm) = &self.comm {
            return comm.rank() == 0;
        }
        true
    }

    /// Whether any rank says `flag`.
    pub fn any(&self, flag: bool) -> bool {
        #[cfg(feature = "dist")]
        if let Some(comm) = &self.comm {
            let mut x = [f32::from(u8::from(flag))];
            comm.all_reduce_sum(&mut x, "the stop flag");
            return x[0] > 0.0;
        }
        flag
    }
}
