//! Starting `mpirun` from a program (the tests, benchmarks): a job with a
//! deadline, after which its whole process group is killed.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How a job ended.
#[derive(Debug)]
pub struct Run {
    /// Whether every rank exited with success.
    pub success: bool,
    /// Standard output, then standard error, of every rank and of mpirun.
    pub output: String,
    /// Wall time.
    pub took: Duration,
}

/// `mpirun --oversubscribe -n ranks program args...` with `env` set (and
/// what running as root needs), one kernel thread per rank unless `env`
/// says otherwise. `Err` if it cannot start or runs past `limit` (then
/// its process group is killed).
pub fn mpirun(
    ranks: usize,
    program: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> Result<Run, String> {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-n", &ranks.to_string()])
        .arg(program)
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Ranks share this machine's cores: one kernel thread each.
        .env("RAYON_NUM_THREADS", "1")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        format!("cannot start mpirun ({e}): install Open MPI (scripts/test.sh does)")
    })?;
    let (mut out, mut err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        err.read_to_string(&mut s).ok();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if start.elapsed() > limit {
            let group = format!("-{}", child.id());
            Command::new("kill")
                .args(["-9", "--", &group])
                .status()
                .ok();
            child.wait().ok();
            return Err(format!(
                "mpirun -n {ranks} {} {args:?} did not end within {limit:?}; output:\n{}",
                program.display(),
                reader.join().unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Run {
        success: status.success(),
        output: reader.join().unwrap_or_default(),
        took: start.elapsed(),
    })
}
