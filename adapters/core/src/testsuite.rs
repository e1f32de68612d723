//! Test support for adapters (feature `testsuite`): an in-memory stand-in for the engine.
//!
//! [`RunHarness`] holds one run the way the engine does and drives [`Adapter::step`] in the
//! engine's loop, with an in-memory [`Journal`] ([`MemJournal`]) and file store
//! ([`MemFiles`]). Adapter crates use it in their `tests/adapter.rs` against their simulator:
//!
//! ```ignore
//! let mut run = RunHarness::new("1", vec![Command::ProcessList]);
//! run.drive(&adapter).await;
//! run.assert_all_succeeded();
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::adapter::{
    Adapter, CommandUpdate, FileReader, FileWriter, Journal, Next, RunContext, RunFiles, StopSignal,
};
use crate::error::AdapterError;
use crate::model::{Command, CommandResult, ErrorCode, ErrorInfo, FileRef, OnError, Status};

/// How [`MemJournal::record`] behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalMode {
    /// Store and return, like a healthy engine.
    Store,
    /// Store, then never return: a crash between the intent and the vendor call.
    StoreThenHang,
    /// Refuse: the run was taken over by another worker.
    Refuse,
}

/// An in-memory [`Journal`] that keeps every recorded checkpoint.
pub struct MemJournal {
    mode: Mutex<JournalMode>,
    records: Mutex<Vec<serde_json::Value>>,
    pending: Mutex<Vec<CommandUpdate>>,
    recorded: Notify,
}

impl Default for MemJournal {
    fn default() -> Self {
        MemJournal {
            mode: Mutex::new(JournalMode::Store),
            records: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            recorded: Notify::new(),
        }
    }
}

impl MemJournal {
    pub fn set_mode(&self, mode: JournalMode) {
        *lock(&self.mode) = mode;
    }

    /// Every checkpoint recorded so far, oldest first.
    pub fn records(&self) -> Vec<serde_json::Value> {
        lock(&self.records).clone()
    }

    /// Resolves at the next `record` call (create it before the step that records).
    pub fn recorded(&self) -> tokio::sync::futures::Notified<'_> {
        self.recorded.notified()
    }

    fn take_pending(&self) -> Vec<CommandUpdate> {
        std::mem::take(&mut *lock(&self.pending))
    }
}

#[async_trait]
impl Journal for MemJournal {
    async fn record(
        &self,
        checkpoint: &serde_json::Value,
        updates: &[CommandUpdate],
    ) -> Result<(), AdapterError> {
        let mode = *lock(&self.mode);
        if mode == JournalMode::Refuse {
            return Err(AdapterError::lease_lost());
        }
        lock(&self.records).push(checkpoint.clone());
        lock(&self.pending).extend_from_slice(updates);
        self.recorded.notify_waiters();
        if mode == JournalMode::StoreThenHang {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// An in-memory [`RunFiles`]: committed result files and files to upload, by id.
#[derive(Clone, Default)]
pub struct MemFiles(Arc<FileStore>);

#[derive(Default)]
struct FileStore {
    files: Mutex<HashMap<String, (String, Vec<u8>)>>,
    next: AtomicU64,
}

impl MemFiles {
    /// Stores a file (e.g. one a `put_file` command will upload) and returns its id.
    pub fn add(&self, name: &str, bytes: &[u8]) -> String {
        let id = format!("file-{}", self.0.next.fetch_add(1, Ordering::Relaxed));
        lock(&self.0.files).insert(id.clone(), (name.to_owned(), bytes.to_vec()));
        id
    }

    /// The content of a stored file.
    pub fn bytes(&self, file: &FileRef) -> Vec<u8> {
        lock(&self.0.files)
            .get(&file.file_id)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no stored file {}", file.file_id))
    }
}

struct MemWriter {
    store: MemFiles,
    name: String,
    buf: Vec<u8>,
}

#[async_trait]
impl FileWriter for MemWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), AdapterError> {
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.buf.len() as u64
    }

    async fn commit(self: Box<Self>) -> Result<FileRef, AdapterError> {
        let this = *self;
        let sha256 = sha256_hex(&this.buf);
        let size = this.buf.len() as u64;
        let file_id = this.store.add(&this.name, &this.buf);
        Ok(FileRef { file_id, name: this.name, size, sha256 })
    }
}

#[async_trait]
impl RunFiles for MemFiles {
    async fn create(&self, _index: usize, name: &str) -> Result<Box<dyn FileWriter>, AdapterError> {
        Ok(Box::new(MemWriter { store: self.clone(), name: name.to_owned(), buf: Vec::new() }))
    }

    async fn open(&self, file_id: &str) -> Result<(FileRef, FileReader), AdapterError> {
        let (name, bytes) = lock(&self.0.files)
            .get(file_id)
            .cloned()
            .ok_or_else(|| AdapterError::new(ErrorCode::NotFound, "no such file"))?;
        let file = FileRef {
            file_id: file_id.to_owned(),
            name,
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        };
        Ok((file, Box::new(Cursor::new(bytes))))
    }
}

/// What the harness knows about one command.
#[derive(Clone, Debug)]
pub struct CommandView {
    pub status: Status,
    pub result: Option<CommandResult>,
    pub error: Option<ErrorInfo>,
    pub vendor_status: Option<String>,
}

/// One run as the engine holds it, and the engine's stepping loop.
pub struct RunHarness {
    pub run_id: Uuid,
    pub action_id: Uuid,
    pub tenant: String,
    pub device_id: String,
    pub commands: Vec<Command>,
    pub on_error: OnError,
    pub stop: StopSignal,
    pub journal: Arc<MemJournal>,
    pub files: MemFiles,
    /// The last stored checkpoint (set it to resume from a journaled one).
    pub checkpoint: Option<serde_json::Value>,
    pub views: Vec<CommandView>,
    /// Every status update, in order.
    pub history: Vec<(usize, Status)>,
    /// Every vendor status word reported, in order.
    pub vendor_history: Vec<(usize, String)>,
}

impl RunHarness {
    pub fn new(device_id: &str, commands: Vec<Command>) -> Self {
        let views = commands
            .iter()
            .map(|_| CommandView {
                status: Status::Queued,
                result: None,
                error: None,
                vendor_status: None,
            })
            .collect();
        RunHarness {
            run_id: Uuid::now_v7(),
            action_id: Uuid::now_v7(),
            tenant: "tenant-1".into(),
            device_id: device_id.into(),
            commands,
            on_error: OnError::Stop,
            stop: StopSignal::new(),
            journal: Arc::new(MemJournal::default()),
            files: MemFiles::default(),
            checkpoint: None,
            views,
            history: Vec::new(),
            vendor_history: Vec::new(),
        }
    }

    pub fn continue_on_error(mut self) -> Self {
        self.on_error = OnError::Continue;
        self
    }

    /// One step, as the engine makes it: updates journaled during the step are applied first.
    pub async fn step(&mut self, adapter: &dyn Adapter) -> Result<Next, AdapterError> {
        let ctx = RunContext {
            run_id: self.run_id,
            action_id: self.action_id,
            tenant: &self.tenant,
            device_id: &self.device_id,
            commands: &self.commands,
            on_error: self.on_error,
            comment: None,
            stop: &self.stop,
            journal: &*self.journal,
            files: &self.files,
            settled: &[],
        };
        let result = adapter.step(&ctx, self.checkpoint.clone()).await;
        let journaled = self.journal.take_pending();
        self.apply(journaled);
        let step = result?;
        self.checkpoint = Some(step.checkpoint);
        self.apply(step.updates);
        Ok(step.next)
    }

    /// Steps until `Next::Done` (retrying retryable errors), sleeping between steps and
    /// waking on a stop, within `limit`. Panics on a permanent error or when a command is left
    /// unfinished.
    pub async fn drive_within(&mut self, adapter: &dyn Adapter, limit: Duration) {
        let work = async {
            loop {
                match self.step(adapter).await {
                    Ok(Next::Done) => return,
                    Ok(Next::After(delay)) => {
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = self.stop.stopped() => {}
                        }
                    }
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => panic!("run failed: {e}"),
                }
            }
        };
        if tokio::time::timeout(limit, work).await.is_err() {
            panic!("run did not finish within {limit:?}: {:?}", self.views);
        }
        for (i, v) in self.views.iter().enumerate() {
            assert!(v.status.is_terminal(), "command {i} left {:?}", v.status);
        }
    }

    /// [`Self::drive_within`] one minute.
    pub async fn drive(&mut self, adapter: &dyn Adapter) {
        self.drive_within(adapter, Duration::from_secs(60)).await
    }

    /// Steps until the journal records an intent, lets the step run on until `then()`
    /// resolves (e.g. a delay, or until the vendor saw the call), then abandons it mid-flight
    /// as a crash would: the checkpoint is the one the engine would hold ([`Self::crash_when`]).
    pub async fn crash_after_intent<F, Fut>(&mut self, adapter: &dyn Adapter, then: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        let journal = Arc::clone(&self.journal);
        // Created now, so it sees a record made as soon as the first step starts.
        let recorded = journal.recorded();
        self.crash_when(adapter, async move {
            recorded.await;
            then().await
        })
        .await;
        journal.set_mode(JournalMode::Store);
    }

    /// Steps until `crash` resolves while a step runs, and abandons that step there (the
    /// process died): the stored checkpoint is what the engine would hold, the last one
    /// journaled during that step, else the one it started from.
    pub async fn crash_when<Fut>(&mut self, adapter: &dyn Adapter, crash: Fut)
    where
        Fut: Future<Output = ()>,
    {
        tokio::pin!(crash);
        loop {
            let records = self.journal.records().len();
            let before = self.checkpoint.clone();
            let crashed = {
                let step = self.step(adapter);
                tokio::pin!(step);
                tokio::select! {
                    // The crash first: a step that reaches the crash point and also finishes
                    // in one poll crashed there (an unbiased pick would let it finish).
                    biased;
                    _ = &mut crash => true,
                    next = &mut step => {
                        match next {
                            Ok(Next::Done) => panic!("the run ended before the crash point"),
                            Ok(Next::After(delay)) => tokio::time::sleep(delay).await,
                            Err(e) => panic!("step failed before the crash point: {e}"),
                        }
                        false
                    }
                }
            };
            if crashed {
                let journaled = self.journal.records();
                self.checkpoint =
                    if journaled.len() > records { journaled.last().cloned() } else { before };
                return;
            }
        }
    }

    pub fn status(&self, index: usize) -> Status {
        self.views[index].status
    }

    pub fn result(&self, index: usize) -> &CommandResult {
        self.views[index]
            .result
            .as_ref()
            .unwrap_or_else(|| panic!("command {index} has no result: {:?}", self.views[index]))
    }

    pub fn error(&self, index: usize) -> &ErrorInfo {
        self.views[index]
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("command {index} has no error: {:?}", self.views[index]))
    }

    pub fn assert_all_succeeded(&self) {
        for (i, v) in self.views.iter().enumerate() {
            assert_eq!(v.status, Status::Succeeded, "command {i} ({:?}): {v:?}", self.commands[i]);
        }
    }

    fn apply(&mut self, updates: Vec<CommandUpdate>) {
        for u in updates {
            let view = &mut self.views[u.index];
            if view.status.is_terminal() {
                // Like the engine, a replayed update (e.g. journaled with an intent, then
                // returned by the step) leaves a finished command alone; a different
                // verdict is an adapter bug.
                assert_eq!(
                    view.status, u.status,
                    "command {} updated after it ended ({:?} -> {:?})",
                    u.index, view.status, u.status
                );
                continue;
            }
            view.status = u.status;
            if u.result.is_some() {
                view.result = u.result;
            }
            if u.error.is_some() {
                view.error = u.error;
            }
            if let Some(word) = u.vendor_status {
                self.vendor_history.push((u.index, word.clone()));
                view.vendor_status = Some(word);
            }
            self.history.push((u.index, u.status));
        }
    }
}

/// Lower-case hex SHA-256, as [`FileRef::sha256`] holds it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
