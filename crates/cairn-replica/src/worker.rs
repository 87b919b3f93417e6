//! A thread of its own for one kind of a node's store work (its applies,
//! or its leader's plans), instead of tokio's blocking pool.
//!
//! The blocking pool hands each task to the thread idle longest, so a
//! node's applies rotated over every pool thread (nine, evenly, in a
//! profile of a three-node site) and each started on a cold cache and a
//! cold allocator heap: the hottest instruction of the whole site was
//! the allocator's read of its free list (`docs/benchmarks.md`). Work
//! that runs one task at a time anyway (a node applies one batch after
//! the other, and its proposer plans one batch after the other) runs
//! here on the same thread every time.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// One named thread running the closures it is given, in order. The
/// thread ends when the worker is dropped.
pub(crate) struct Worker {
    name: String,
    tx: mpsc::Sender<Job>,
}

impl Worker {
    pub(crate) fn start(name: String) -> std::io::Result<Worker> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // A job that panics answers its caller with an error
                    // (its reply is dropped); the thread goes on.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            })?;
        Ok(Worker { name, tx })
    }

    /// Runs `f` on the worker's thread and waits for it without blocking
    /// the runtime.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(f());
        });
        self.tx
            .send(job)
            .map_err(|_| format!("{}: the thread has ended", self.name))?;
        answer
            .await
            .map_err(|_| format!("{}: the task panicked", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_on_one_thread_and_a_panic_is_an_error_not_the_end() {
        let w = Worker::start("test-worker".into()).unwrap();
        let first = w.run(|| std::thread::current().id()).await.unwrap();
        let err = w.run(|| -> u8 { panic!("a job that fails") }).await;
        assert_eq!(err.unwrap_err(), "test-worker: the task panicked");
        let again = w.run(|| std::thread::current().id()).await.unwrap();
        assert_eq!(first, again);
        assert_ne!(first, std::thread::current().id());
        let name = w
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("test-worker"));
    }
}
