//! Threads for requests, and the permits that bound their CPU work.
//!
//! A request waits on its client twice: while its body arrives and while its answer is read.
//! If those waits happened on a fixed set of workers, a handful of clients that stall would
//! hold them all and nobody else would be answered. So each request runs on a thread of its
//! own (`Elastic`: reused, started when none is free, gone after a while unused; as many as
//! requests in flight, which `--max-connections` bounds), and only the work between reading
//! and answering takes one of a fixed number of `Permits`, so the CPU is still shared by a
//! few at a time.
//!
//! A free thread is claimed when the job is handed out, not when it is picked up: the claim
//! and the count of free threads change together, so two jobs can never count on the same
//! free thread (tiny_http's own pool can, and leaves a connection waiting; DESIGN.md, defect 1).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

type Job = Box<dyn FnOnce() + Send>;

/// How long a thread with nothing to do waits for a job before it ends.
const LINGER: Duration = Duration::from_secs(30);
/// Stack of a request thread: requests parse JSON and build answers, nothing deep.
const STACK: usize = 512 * 1024;

/// A pool that grows to as many threads as jobs running at once.
#[derive(Clone)]
pub struct Elastic {
    name: &'static str,
    jobs: Sender<Job>,
    taken: Receiver<Job>,
    /// Threads waiting for a job and not yet claimed.
    free: Arc<AtomicUsize>,
}

impl Elastic {
    pub fn new(name: &'static str) -> Elastic {
        let (jobs, taken) = crossbeam_channel::unbounded();
        Elastic {
            name,
            jobs,
            taken,
            free: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs `job` on a free thread, or on a new one if none is free. Fails only when no
    /// thread can be started (the job is then dropped).
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let job: Job = Box::new(job);
        let mut free = self.free.load(Ordering::Acquire);
        loop {
            if free == 0 {
                return self.start(job);
            }
            match self.free.compare_exchange_weak(
                free,
                free - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // A claimed thread is waiting (or about to wait) for exactly this job.
                    return self
                        .jobs
                        .send(job)
                        .map_err(|_| io::Error::other("the pool has stopped"));
                }
                Err(now) => free = now,
            }
        }
    }

    fn start(&self, first: Job) -> io::Result<()> {
        let (taken, free) = (self.taken.clone(), self.free.clone());
        std::thread::Builder::new()
            .name(self.name.into())
            .stack_size(STACK)
            .spawn(move || {
                run_one(first);
                loop {
                    free.fetch_add(1, Ordering::AcqRel);
                    match next_job(&taken, &free) {
                        Some(job) => run_one(job),
                        None => return,
                    }
                }
            })
            .map(|_| ())
    }
}

/// Waits for the next job of a thread counted free; `None` when it should end (unclaimed
/// for `LINGER`, or the pool is gone).
fn next_job(taken: &Receiver<Job>, free: &AtomicUsize) -> Option<Job> {
    loop {
        match taken.recv_timeout(LINGER) {
            Ok(job) => return Some(job),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {
                // Leave only by taking back a free slot nobody has claimed; when all are
                // claimed, a job is on its way to one of the waiting threads: maybe this one.
                let mut n = free.load(Ordering::Acquire);
                while n > 0 {
                    match free.compare_exchange_weak(n, n - 1, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(_) => return None,
                        Err(now) => n = now,
                    }
                }
            }
        }
    }
}

/// Runs a job; a panic costs that request, not the thread or the count of free threads.
fn run_one(job: Job) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
        log::error!("a request thread's job panicked");
    }
}

/// A fixed number of places for work that uses the CPU (or another bounded resource, such as
/// a peer's upload slots).
#[derive(Clone)]
pub struct Permits {
    give: Sender<()>,
    take: Receiver<()>,
}

/// A place taken from `Permits`; given back when dropped.
pub struct Permit {
    back: Sender<()>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let _ = self.back.try_send(());
    }
}

impl Permits {
    pub fn new(n: usize) -> Permits {
        let n = n.max(1);
        let (give, take) = crossbeam_channel::bounded(n);
        for _ in 0..n {
            let _ = give.try_send(());
        }
        Permits { give, take }
    }

    /// Waits for a place.
    pub fn acquire(&self) -> Permit {
        // The channel never disconnects: `self` holds a sender.
        let _ = self.take.recv();
        Permit {
            back: self.give.clone(),
        }
    }

    /// Waits at most `wait` for a place.
    pub fn acquire_within(&self, wait: Duration) -> Option<Permit> {
        self.take.recv_timeout(wait).ok().map(|()| Permit {
            back: self.give.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::time::Instant;

    #[test]
    fn jobs_that_block_never_keep_others_waiting() {
        let pool = Elastic::new("test-pool");
        let (release, blocked) = crossbeam_channel::bounded::<()>(0);
        for _ in 0..8 {
            let blocked = blocked.clone();
            pool.run(move || {
                let _ = blocked.recv();
            })
            .unwrap();
        }
        let (done, finished) = crossbeam_channel::bounded(1);
        pool.run(move || done.send(()).unwrap()).unwrap();
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("a ninth job runs while eight block");
        drop(release);
    }

    #[test]
    fn threads_are_reused_and_each_job_runs_once() {
        let pool = Elastic::new("test-pool");
        let ran = Arc::new(AtomicUsize::new(0));
        let (done, finished) = crossbeam_channel::unbounded();
        for round in 0..50 {
            let (ran, done) = (ran.clone(), done.clone());
            pool.run(move || {
                ran.fetch_add(1, Ordering::SeqCst);
                done.send(round).unwrap();
            })
            .unwrap();
            finished.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 50);
        assert!(
            pool.free.load(Ordering::SeqCst) <= 2,
            "one thread did them all"
        );
    }

    #[test]
    fn a_panicking_job_leaves_the_pool_working() {
        let pool = Elastic::new("test-pool");
        pool.run(|| panic!("boom")).unwrap();
        let (done, finished) = crossbeam_channel::bounded(1);
        pool.run(move || done.send(()).unwrap()).unwrap();
        finished.recv_timeout(Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn permits_bound_how_many_run_at_once() {
        let permits = Permits::new(2);
        let a = permits.acquire();
        let _b = permits.acquire();
        assert!(permits.acquire_within(Duration::from_millis(20)).is_none());
        drop(a);
        assert!(permits.acquire_within(Duration::from_secs(5)).is_some());
        let started = Instant::now();
        let barrier = Arc::new(Barrier::new(2));
        let (p, b) = (permits.clone(), barrier.clone());
        let t = std::thread::spawn(move || {
            b.wait();
            p.acquire_within(Duration::from_secs(5)).is_some()
        });
        barrier.wait();
        assert!(t.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
