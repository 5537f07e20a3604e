//! Writes the state file off the async runtime. Each write is two `fsync`s; done on a runtime
//! thread (the admin handler, the gossip round) it stalled the data plane, wholly so with
//! `worker_threads = 1`. One thread writes the snapshots it is handed, in order; when several
//! wait, only the newest is written (each is the whole state).

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use crate::replicated::write_atomically;

#[derive(Debug)]
pub(crate) struct Persister {
    sender: Mutex<Option<mpsc::Sender<String>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Persister {
    /// Starts the writer thread for the state file at `path`.
    pub(crate) fn start(path: PathBuf) -> std::io::Result<Persister> {
        let (sender, receiver) = mpsc::channel::<String>();
        let thread = std::thread::Builder::new()
            .name("hearsay-persist".to_owned())
            .spawn(move || {
                while let Ok(mut text) = receiver.recv() {
                    // Newer snapshots supersede older ones: write the newest only.
                    while let Ok(newer) = receiver.try_recv() {
                        text = newer;
                    }
                    if let Err(error) = write_atomically(&path, &text) {
                        tracing::error!(path = %path.display(), %error, "cannot persist cluster state; changes since the last write will not survive a restart of this node");
                    }
                }
            })?;
        Ok(Persister {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hands a snapshot of the whole state to the writer (returns at once).
    pub(crate) fn save(&self, text: String) {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(sender) = sender.as_ref() {
            let _ = sender.send(text);
        }
    }

    /// Writes what is still waiting and stops the writer. Blocks until done: call it from a
    /// blocking context.
    pub(crate) fn finish(&self) {
        drop(
            self.sender
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_snapshot_is_on_disk_after_finish() {
        let dir = std::env::temp_dir().join(format!("hearsay-persist-{}", std::process::id()));
        let path = dir.join("state.json");
        let persister = Persister::start(path.clone()).unwrap();
        for index in 0..50 {
            persister.save(format!("{{\"n\": {index}}}"));
        }
        persister.finish();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\": 49}");
        // Saving after the end is ignored, not a panic.
        persister.save("late".to_owned());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
