//! A miner that keeps a regtest chain moving, as a live chain would, and that a test
//! pauses to hold the chain still.

use crate::Bitcoind;
use std::{sync::Arc, time::Duration};
use tokio::{sync::Mutex, task::JoinHandle};

/// Mines one block every `every` on its own task until dropped.
///
/// [`Miner::pause`] returns only once no block is being mined and none will be until
/// [`Miner::resume`]: a test that pauses and then reads the height reads a height that
/// holds.
#[derive(Debug)]
pub struct Miner {
    /// Held by the task while it mines a block, and by a pause for as long as it lasts.
    gate: Arc<Mutex<()>>,
    paused: std::sync::Mutex<Option<tokio::sync::OwnedMutexGuard<()>>>,
    task: JoinHandle<()>,
}

impl Miner {
    pub fn start(btc: Arc<Bitcoind>, every: Duration) -> Self {
        let gate = Arc::new(Mutex::new(()));
        let task = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let _mining = gate.lock().await;
                    let _ = btc.mine(1).await;
                }
            })
        };
        Self { gate, paused: std::sync::Mutex::new(None), task }
    }

    /// Stops mining; returns once a block being mined (if any) is in.
    pub async fn pause(&self) {
        if self.is_paused() {
            return;
        }
        let guard = self.gate.clone().lock_owned().await;
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    }

    /// Mines again from the next tick.
    pub fn resume(&self) {
        self.paused.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub fn is_paused(&self) -> bool {
        self.paused.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

impl Drop for Miner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_paused_miner_mines_nothing_until_it_resumes() -> eyre::Result<()> {
        let btc = Arc::new(Bitcoind::start().await?);
        let start = btc.block_count().await?;
        let miner = Miner::start(btc.clone(), Duration::from_millis(50));
        crate::wait_until("a block mined", Duration::from_secs(30), || async {
            (btc.block_count().await.ok()? > start).then_some(())
        })
        .await?;
        miner.pause().await;
        let held = btc.block_count().await?;
        // Twenty ticks' worth of waiting: a miner that kept going would have mined.
        let moved = crate::wait_until("the chain to move while paused", Duration::from_secs(1), || async {
            (btc.block_count().await.ok()? > held).then_some(())
        })
        .await;
        assert!(moved.is_err(), "a block was mined while paused");
        miner.resume();
        crate::wait_until("mining again", Duration::from_secs(30), || async {
            (btc.block_count().await.ok()? > held).then_some(())
        })
        .await?;
        Ok(())
    }
}
