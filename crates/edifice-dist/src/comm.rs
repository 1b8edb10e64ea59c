//! The MPI world, with a deadline on every exchange.
//!
//! Open MPI moves a large message only while one of its calls runs (it has
//! no progress thread), so every wait here polls: it tests its requests
//! about every [`POLL`] and gives up at the deadline. Giving up ends the
//! whole job: this rank prints what it was waiting for and from whom, and
//! calls `MPI_Abort`, which makes `mpirun` end every rank. That is the only
//! safe end: a peer that died or stopped answering leaves requests that
//! MPI (Open MPI 4.1, without ULFM) can neither cancel nor recover, and
//! their buffers must not be freed while MPI may still write into them.
//! A rank that dies is caught sooner by `mpirun` itself, which ends the
//! others when it sees a rank exit abnormally.
//!
//! MPI is initialised with `MPI_THREAD_FUNNELED`: only the thread that
//! created the [`Comm`] calls MPI (checked on every call); the kernels run
//! on rayon's threads meanwhile.

use std::ffi::c_int;
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use mpi::environment::Universe;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

use crate::DistError;

/// How often a wait tests its requests.
pub const POLL: Duration = Duration::from_micros(50);

/// How long a wait tests without sleeping.
const SPIN: Duration = Duration::from_micros(200);

/// The pause between tests while the kernels run, once the transfers
/// have taken longer than [`PATIENCE`].
pub const MAX_POLL: Duration = Duration::from_millis(1);

/// How long the kernels' helper polls at [`POLL`] before backing off.
pub const PATIENCE: Duration = Duration::from_millis(20);

/// The exit code of a job ended by a timeout.
pub const TIMEOUT_EXIT: c_int = 3;

/// This process's place in the MPI world, and the deadline of its waits.
pub struct Comm {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    timeout: Duration,
    thread: ThreadId,
    // Last: MPI is finalised when the universe drops, after the world.
    _universe: Universe,
}

// SAFETY: the communicator is only used from the thread that initialised
// MPI: every method that calls MPI checks `thread` first.
unsafe impl Send for Comm {}
unsafe impl Sync for Comm {}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Comm {{ rank: {}, size: {}, timeout: {:?} }}",
            self.rank, self.size, self.timeout
        )
    }
}

/// A non-blocking send or receive in flight.
#[derive(Debug)]
#[must_use = "a request must be finished before its buffer is reused"]
pub struct Pending {
    request: ffi::MPI_Request,
    peer: usize,
    what: &'static str,
}

// SAFETY: a request handle is an opaque pointer only the MPI thread uses.
unsafe impl Send for Pending {}

impl Comm {
    /// Initialises MPI. `timeout` bounds every wait; a process started
    /// without `mpirun` is a world of one.
    pub fn init(timeout: Duration) -> Result<Comm, DistError> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| DistError::Init("MPI is already initialised in this process".into()))?;
        if threading < Threading::Funneled {
            return Err(DistError::Init(format!(
                "MPI offers {threading:?} threading; edifice-dist needs Funneled"
            )));
        }
        let world = universe.world();
        Ok(Comm {
            rank: world.rank() as usize,
            size: world.size() as usize,
            world,
            timeout,
            thread: thread::current().id(),
            _universe: universe,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the world, `P`.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The deadline of every wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The next rank round the ring.
    pub fn next(&self) -> usize {
        (self.rank + 1) % self.size
    }

    /// The previous rank round the ring.
    pub fn prev(&self) -> usize {
        (self.rank + self.size - 1) % self.size
    }

    fn raw(&self) -> ffi::MPI_Comm {
        assert_eq!(
            thread::current().id(),
            self.thread,
            "MPI called from a thread other than the one that initialised it"
        );
        self.world.as_raw()
    }

    /// Ends every rank of the job: prints `message` for this rank and
    /// calls `MPI_Abort`.
    pub fn fail(&self, message: &str) -> ! {
        eprintln!("error: rank {} of {}: {message}", self.rank, self.size);
        // SAFETY: aborting is valid in any state once MPI is initialised.
        unsafe {
            ffi::MPI_Abort(self.world.as_raw(), TIMEOUT_EXIT);
        }
        std::process::exit(TIMEOUT_EXIT)
    }

    fn check(&self, code: c_int, what: &str) {
        if code != ffi::MPI_SUCCESS as c_int {
            self.fail(&format!("MPI error {code} in {what}"));
        }
    }

    /// Starts sending `buf` to `to`.
    ///
    /// # Safety
    /// `buf` must stay alive and unchanged until the request is finished
    /// ([`finish`](Self::finish) or a [`test`](Self::test) that returns
    /// `true`).
    pub unsafe fn isend(&self, buf: &[f32], to: usize, tag: i32, what: &'static str) -> Pending {
        self.start(what, to, |comm, request| {
            ffi::MPI_Isend(
                buf.as_ptr().cast(),
                count(buf.len()),
                f32::datatype(),
                to as c_int,
                tag,
                comm,
                request,
            )
        })
    }

    /// Starts receiving `buf.len()` values from `from` into `buf`.
    ///
    /// # Safety
    /// `buf` must stay alive, and not be read or written, until the request
    /// is finished.
    pub unsafe fn irecv(
        &self,
        buf: &mut [f32],
        from: usize,
        tag: i32,
        what: &'static str,
    ) -> Pending {
        self.start(what, from, |comm, request| {
            ffi::MPI_Irecv(
                buf.as_mut_ptr().cast(),
                count(buf.len()),
                f32::datatype(),
                from as c_int,
                tag,
                comm,
                request,
            )
        })
    }

    /// Starts a non-blocking call (`call(comm, request)` returns MPI's
    /// code) waiting on `peer`; an MPI error ends the job.
    ///
    /// # Safety
    /// As the call's own: its buffers must outlive the request.
    unsafe fn start(
        &self,
        what: &'static str,
        peer: usize,
        call: impl FnOnce(ffi::MPI_Comm, &mut ffi::MPI_Request) -> c_int,
    ) -> Pending {
        let comm = self.raw();
        let mut request = ffi::RSMPI_REQUEST_NULL;
        let code = call(comm, &mut request);
        self.check(code, what);
        Pending {
            request,
            peer,
            what,
        }
    }

    /// Whether `pending` has finished (and so is gone); lets MPI progress.
    pub fn test(&self, pending: &mut Option<Pending>) -> bool {
        let Some(p) = pending.as_mut() else {
            return true;
        };
        let _ = self.raw();
        let mut flag: c_int = 0;
        // SAFETY: a live request from isend/irecv; status ignored.
        let code = unsafe { ffi::MPI_Test(&mut p.request, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
        self.check(code, p.what);
        if flag != 0 {
            *pending = None;
        }
        flag != 0
    }

    /// Waits for every request in `pending`, ending the job at the deadline.
    pub fn finish(&self, pending: &mut [Option<Pending>]) {
        let start = Instant::now();
        loop {
            let mut done = true;
            for p in pending.iter_mut() {
                done &= self.test(p);
            }
            if done {
                return;
            }
            let waited = start.elapsed();
            if waited > self.timeout {
                let p = pending.iter().flatten().next().expect("one is left");
                self.fail(&format!(
                    "timed out after {:.0} s waiting for rank {} ({})",
                    self.timeout.as_secs_f64(),
                    p.peer,
                    p.what
                ));
            }
            // A transfer that is nearly done often needs just another test
            // or two: spin briefly before sleeping (a sleep costs ~60 µs).
            if waited < SPIN {
                thread::yield_now();
            } else {
                thread::sleep(POLL);
            }
        }
    }

    /// Runs `work` on a helper thread while this thread keeps `pending`
    /// moving (Open MPI progresses only inside its calls), and returns its
    /// result. Requests that finish meanwhile are cleared.
    pub fn overlap<R: Send>(
        &self,
        pending: &mut [Option<Pending>],
        work: impl FnOnce() -> R + Send,
    ) -> R {
        if pending.iter().all(Option::is_none) {
            return work();
        }
        thread::scope(|s| {
            let handle = s.spawn(work);
            // Without a single-copy mechanism (containers often forbid
            // it), a large message moves one shared-memory fragment at a
            // time, inside the tests of both ends: poll often while the
            // transfers move, stop once they are done, and back off if a
            // peer is late (every wake-up takes the core from the kernels).
            let start = Instant::now();
            while !handle.is_finished() {
                let mut done = true;
                for p in pending.iter_mut() {
                    done &= self.test(p);
                }
                if done {
                    break;
                }
                let late = start.elapsed() > PATIENCE;
                thread::sleep(if late { MAX_POLL } else { POLL });
            }
            handle
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Element-wise sum of `x` over every rank, in place.
    pub fn all_reduce_sum(&self, x: &mut [f32], what: &'static str) {
        let send = x.to_vec();
        // SAFETY: `send` and `x` outlive the request: it is finished here.
        let request = unsafe {
            self.start(what, self.prev(), |comm, request| {
                ffi::MPI_Iallreduce(
                    send.as_ptr().cast(),
                    x.as_mut_ptr().cast(),
                    count(x.len()),
                    f32::datatype(),
                    ffi::RSMPI_SUM,
                    comm,
                    request,
                )
            })
        };
        self.finish(&mut [Some(request)]);
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self, what: &'static str) {
        self.all_gather(0, what);
    }

    /// Every rank's `value`, by rank.
    pub fn all_gather(&self, value: u64, what: &'static str) -> Vec<u64> {
        let mut out = vec![0u64; self.size];
        // SAFETY: `value` and `out` outlive the request: it is finished here.
        let request = unsafe {
            self.start(what, self.prev(), |comm, request| {
                ffi::MPI_Iallgather(
                    (&value as *const u64).cast(),
                    1,
                    ffi::RSMPI_UINT64_T,
                    out.as_mut_ptr().cast(),
                    1,
                    ffi::RSMPI_UINT64_T,
                    comm,
                    request,
                )
            })
        };
        self.finish(&mut [Some(request)]);
        out
    }

    /// `x` from rank `root` on every rank.
    pub fn broadcast<T: Scalar>(&self, x: &mut [T], root: usize, what: &'static str) {
        // SAFETY: `x` outlives the request: it is finished here.
        let request = unsafe {
            self.start(what, root, |comm, request| {
                let (ptr, n) = (x.as_mut_ptr().cast(), count(x.len()));
                ffi::MPI_Ibcast(ptr, n, T::datatype(), root as c_int, comm, request)
            })
        };
        self.finish(&mut [Some(request)]);
    }

    /// Rank 0 gets every rank's `local` (lengths may differ), by rank;
    /// the others get `None`.
    pub fn gather(&self, local: &[f32], what: &'static str) -> Option<Vec<Vec<f32>>> {
        let lens: Vec<u64> = self.all_gather(local.len() as u64, what);
        if self.rank != 0 {
            // SAFETY: `local` outlives the request: it is finished here.
            let send = unsafe { self.isend(local, 0, TAG_GATHER, what) };
            self.finish(&mut [Some(send)]);
            return None;
        }
        let mut parts: Vec<Vec<f32>> = lens.iter().map(|&n| vec![0.0; n as usize]).collect();
        parts[0].copy_from_slice(local);
        let mut pending: Vec<Option<Pending>> = parts
            .iter_mut()
            .enumerate()
            .skip(1)
            // SAFETY: `parts` outlives the requests: they are finished below.
            .map(|(r, part)| Some(unsafe { self.irecv(part, r, TAG_GATHER, what) }))
            .collect();
        self.finish(&mut pending);
        Some(parts)
    }

    /// Checks that every rank computed the same `fingerprint` of `what`
    /// (shapes, options, weights): a [`DistError::Mismatch`] naming the
    /// ranks that differ from rank 0 otherwise, on every rank alike.
    pub fn check_same(&self, what: &str, fingerprint: u64) -> Result<(), DistError> {
        let all = self.all_gather(fingerprint, "the start-up check");
        let differ: Vec<usize> = (0..self.size).filter(|&r| all[r] != all[0]).collect();
        if differ.is_empty() {
            return Ok(());
        }
        Err(DistError::Mismatch(format!(
            "{what}: rank(s) {differ:?} differ from rank 0; every rank must run the same configuration"
        )))
    }
}

/// A value type MPI can move.
pub trait Scalar: Copy {
    /// Its MPI datatype.
    fn datatype() -> ffi::MPI_Datatype;
}

impl Scalar for f32 {
    fn datatype() -> ffi::MPI_Datatype {
        // SAFETY: reading a constant MPI handle.
        unsafe { ffi::RSMPI_FLOAT }
    }
}

impl Scalar for f64 {
    fn datatype() -> ffi::MPI_Datatype {
        // SAFETY: reading a constant MPI handle.
        unsafe { ffi::RSMPI_DOUBLE }
    }
}

/// The tag of [`Comm::gather`]'s messages.
const TAG_GATHER: i32 = 100;

/// A message's element count, which MPI takes as a C int.
fn count(len: usize) -> c_int {
    c_int::try_from(len).expect("messages are split below 2^31 elements")
}
