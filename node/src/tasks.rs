//! The daemon's long-lived tasks, each spawned under a name and supervised: the run
//! loop waits on [`Tasks::exited`] beside its other inputs, and the first critical task
//! to end (return, error or panic) stops the node with that task's name and reason.
//! (Work that ends by design is not here: the relay dispatcher owns its relay jobs
//! and reports one that panics; a request's few seconds of retries and a catch-up
//! request are spawned plainly.)

use futures::FutureExt;
use std::{future::Future, panic::AssertUnwindSafe};
use tokio::task::JoinSet;

/// Why a critical task ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskExit {
    #[error("critical task `{0}` returned: it should run as long as the node")]
    Returned(String),
    #[error("critical task `{0}` failed: {1}")]
    Failed(String, String),
    #[error("critical task `{0}` panicked: {1}")]
    Panicked(String, String),
}

/// The supervised tasks of one run.
#[derive(Default)]
pub struct Tasks {
    set: JoinSet<TaskExit>,
    names: Vec<String>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks").field("names", &self.names).finish()
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `task`, which the node cannot run without, under `name`.
    pub fn critical<F>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future<Output = eyre::Result<()>> + Send + 'static,
    {
        let name = name.into();
        self.names.push(name.clone());
        self.set.spawn(async move {
            match AssertUnwindSafe(task).catch_unwind().await {
                Ok(Ok(())) => TaskExit::Returned(name),
                Ok(Err(e)) => TaskExit::Failed(name, format!("{e:#}")),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a non-text panic".to_owned());
                    TaskExit::Panicked(name, what)
                }
            }
        });
    }

    /// The names of the tasks spawned, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Waits until a critical task ends, and says which and why. With no task left it
    /// never resolves (so that a `select!` arm on it stays quiet).
    pub async fn exited(&mut self) -> TaskExit {
        match self.set.join_next().await {
            Some(Ok(exit)) => exit,
            // Cancelled: only `abort_all` does that, after the loop ended.
            Some(Err(e)) => TaskExit::Failed("unknown".to_owned(), e.to_string()),
            None => std::future::pending().await,
        }
    }

    pub fn abort_all(&mut self) {
        self.set.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_first_task_to_end_is_named_with_its_reason() {
        let mut tasks = Tasks::new();
        tasks.critical("forever", std::future::pending());
        tasks.critical("fails", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err(eyre::eyre!("bitcoind went away"))
        });
        assert_eq!(tasks.exited().await, TaskExit::Failed("fails".into(), "bitcoind went away".into()));

        tasks.critical("panics", async {
            let v: Vec<u8> = Vec::new();
            if v.is_empty() {
                panic!("index out of range in the relay dispatcher");
            }
            Ok(())
        });
        let exit = tasks.exited().await;
        assert_eq!(exit, TaskExit::Panicked("panics".into(), "index out of range in the relay dispatcher".into()));
        assert!(exit.to_string().contains("`panics` panicked"), "{exit}");

        tasks.critical("returns", async { Ok(()) });
        assert_eq!(tasks.exited().await, TaskExit::Returned("returns".into()));
        assert_eq!(tasks.names(), ["forever", "fails", "panics", "returns"]);
        // Only the pending one is left: `exited` waits.
        assert!(tokio::time::timeout(Duration::from_millis(50), tasks.exited()).await.is_err());
        tasks.abort_all();
    }
}
