//! The engine: the single writer of the event log.
//!
//! Admin requests become jobs on a bounded queue. One dedicated thread takes jobs in
//! batches (group commit): it decides each job against the current state, appends every
//! resulting event in one sled transaction, flushes once, and only then replies to each
//! job and publishes the new state and snapshot. One writer means sequence numbers need no
//! locking and optimistic-concurrency checks see every earlier write.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::apply::{ApplyOutcome, DesiredState, PlannedChange, plan};
use crate::commands::{Command, CommandError, Decision};
use crate::compile::{CompiledSnapshot, compile};
use crate::events::{AggregateKey, Event};
use crate::secrets::{MasterKey, SecretError, SecretStore};
use crate::state::State;
use crate::store::{AppendBatch, EventStore, StoreError};

/// Most jobs committed by one flush.
const MAX_JOBS_PER_BATCH: usize = 512;
/// Jobs waiting for the writer before senders wait too (backpressure).
const JOB_QUEUE_CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Write a state snapshot after this many events since the last one.
    pub state_snapshot_every: u64,
    /// How many state snapshots to keep.
    pub state_snapshots_kept: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            state_snapshot_every: 10_000,
            state_snapshots_kept: 3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("cannot compile the configuration snapshot: {0}")]
    Compile(#[from] crate::compile::CompileError),
    #[error("cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

/// The result of a successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The global revision after the write.
    pub revision: u64,
    /// The revision of the (last) aggregate written.
    pub aggregate_revision: u64,
}

enum JobKind {
    Commands {
        commands: Vec<Command>,
        expected_revision: Option<u64>,
    },
    Apply {
        desired: Box<DesiredState>,
        prune: bool,
        dry_run: bool,
        expected_revision: Option<u64>,
    },
}

/// What a job produced; the variant matches the job's kind.
enum JobOutcome {
    Write(WriteOutcome),
    Apply(ApplyOutcome),
}

type JobReply = oneshot::Sender<Result<JobOutcome, CommandError>>;

struct Job {
    actor: String,
    kind: JobKind,
    reply: JobReply,
}

pub struct Engine {
    jobs: mpsc::Sender<Job>,
    writer: std::thread::JoinHandle<()>,
    state: watch::Receiver<Arc<State>>,
    snapshots: watch::Receiver<Arc<CompiledSnapshot>>,
    store: Arc<EventStore>,
    secrets: Arc<SecretStore>,
}

impl Engine {
    /// Opens the data directory, replays the log, compiles the first snapshot and starts
    /// the writer thread.
    pub fn open(
        data_dir: &Path,
        master_key: MasterKey,
        previous_master_key: Option<MasterKey>,
        options: EngineOptions,
    ) -> Result<Self, EngineError> {
        let store = Arc::new(EventStore::open(data_dir)?);
        let secrets = Arc::new(SecretStore::load(
            store.db(),
            master_key,
            previous_master_key,
        )?);
        let started = std::time::Instant::now();
        let state = Arc::new(store.load_state(None)?);
        tracing::info!(
            revision = state.revision,
            servers = state.servers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "configuration state replayed"
        );
        let snapshot = Arc::new(compile(&state, &secrets)?);
        let (state_tx, state_rx) = watch::channel(state.clone());
        let (snapshot_tx, snapshot_rx) = watch::channel(snapshot);
        let (jobs_tx, jobs_rx) = mpsc::channel(JOB_QUEUE_CAPACITY);
        let writer = Writer {
            store: store.clone(),
            secrets: secrets.clone(),
            state,
            state_tx,
            snapshot_tx,
            last_state_snapshot: store.latest_state_snapshot_revision()?,
            options,
        };
        let writer = std::thread::Builder::new()
            .name("config-log-writer".to_owned())
            .spawn(move || writer.run(jobs_rx))
            .map_err(EngineError::Thread)?;
        Ok(Self {
            jobs: jobs_tx,
            writer,
            state: state_rx,
            snapshots: snapshot_rx,
            store,
            secrets,
        })
    }

    /// Runs commands atomically: all their events are appended, or none.
    pub async fn execute(
        &self,
        actor: &str,
        commands: Vec<Command>,
        expected_revision: Option<u64>,
    ) -> Result<WriteOutcome, CommandError> {
        let kind = JobKind::Commands {
            commands,
            expected_revision,
        };
        match self.submit(actor, kind).await? {
            JobOutcome::Write(outcome) => Ok(outcome),
            JobOutcome::Apply(_) => unreachable!("a command job replies with a write outcome"),
        }
    }

    pub async fn apply(
        &self,
        actor: &str,
        desired: DesiredState,
        prune: bool,
        dry_run: bool,
        expected_revision: Option<u64>,
    ) -> Result<ApplyOutcome, CommandError> {
        let kind = JobKind::Apply {
            desired: Box::new(desired),
            prune,
            dry_run,
            expected_revision,
        };
        match self.submit(actor, kind).await? {
            JobOutcome::Apply(outcome) => Ok(outcome),
            JobOutcome::Write(_) => unreachable!("an apply job replies with an apply outcome"),
        }
    }

    async fn submit(&self, actor: &str, kind: JobKind) -> Result<JobOutcome, CommandError> {
        let (reply, receive) = oneshot::channel();
        let job = Job {
            actor: actor.to_owned(),
            kind,
            reply,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| CommandError::ShuttingDown)?;
        receive.await.map_err(|_| CommandError::ShuttingDown)?
    }

    /// The current state (every acknowledged write is in it).
    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    /// The state as it was at `revision`, rebuilt from the log.
    pub async fn state_at(&self, revision: u64) -> Result<State, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.load_state(Some(revision)))
            .await
            .map_err(|error| StoreError::Encode(error.to_string()))?
    }

    pub fn subscribe_state(&self) -> watch::Receiver<Arc<State>> {
        self.state.clone()
    }

    pub fn subscribe_snapshots(&self) -> watch::Receiver<Arc<CompiledSnapshot>> {
        self.snapshots.clone()
    }

    pub fn store(&self) -> &Arc<EventStore> {
        &self.store
    }

    pub fn secrets(&self) -> &Arc<SecretStore> {
        &self.secrets
    }

    /// Stops accepting writes, lets the writer finish the jobs already queued, and waits
    /// for it, so the data directory can be reopened. Blocks: call off the async reactor.
    pub fn close(self) {
        let Engine {
            jobs,
            writer,
            state,
            snapshots,
            store,
            secrets,
        } = self;
        drop((jobs, state, snapshots, secrets));
        if writer.join().is_err() {
            tracing::error!("the configuration writer panicked");
        }
        drop(store);
    }
}

struct Writer {
    store: Arc<EventStore>,
    secrets: Arc<SecretStore>,
    state: Arc<State>,
    state_tx: watch::Sender<Arc<State>>,
    snapshot_tx: watch::Sender<Arc<CompiledSnapshot>>,
    last_state_snapshot: u64,
    options: EngineOptions,
}

/// A job whose events are staged in the batch, waiting for the flush to reply.
struct Staged {
    reply: JobReply,
    result: Result<JobOutcome, CommandError>,
}

impl Writer {
    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(first) = jobs.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_JOBS_PER_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
        tracing::info!("configuration writer stopped");
    }

    fn commit_batch(&mut self, batch: Vec<Job>) {
        let mut working = State::clone(&self.state);
        let mut append = AppendBatch::default();
        let mut staged = Vec::with_capacity(batch.len());
        for job in batch {
            let result = self.stage(&mut working, &mut append, job.actor, job.kind);
            staged.push(Staged {
                reply: job.reply,
                result,
            });
        }
        if !append.events.is_empty()
            && let Err(error) = self.store.append(&append)
        {
            // The log on disk may or may not hold this batch; the in-memory state can
            // no longer be trusted. Stop so a restart replays what is durable.
            tracing::error!(%error, "appending to the configuration log failed; stopping");
            for job in staged {
                let _ = job
                    .reply
                    .send(Err(CommandError::Storage(error.to_string())));
            }
            std::process::exit(70);
        }
        let snapshot_changed = working.snapshot_revision != self.state.snapshot_revision;
        self.state = Arc::new(working);
        self.state_tx.send_replace(self.state.clone());
        for job in staged {
            // A caller that went away (cancelled RPC) no longer needs the answer; the
            // write stands either way.
            let _ = job.reply.send(job.result);
        }
        if snapshot_changed {
            match compile(&self.state, &self.secrets) {
                Ok(snapshot) => {
                    self.snapshot_tx.send_replace(Arc::new(snapshot));
                }
                Err(error) => {
                    tracing::error!(%error, "cannot compile snapshot; nodes keep the previous one");
                }
            }
        }
        if self.state.revision >= self.last_state_snapshot + self.options.state_snapshot_every {
            match self
                .store
                .write_state_snapshot(&self.state, self.options.state_snapshots_kept)
            {
                Ok(()) => self.last_state_snapshot = self.state.revision,
                Err(error) => tracing::warn!(%error, "cannot write state snapshot"),
            }
        }
    }

    /// Decides one job against `working` and stages its events. A failed job leaves
    /// `working` and `append` exactly as they were.
    fn stage(
        &self,
        working: &mut State,
        append: &mut AppendBatch,
        actor: String,
        kind: JobKind,
    ) -> Result<JobOutcome, CommandError> {
        match kind {
            JobKind::Commands {
                commands,
                expected_revision,
            } => {
                check_global_revision(working, expected_revision)?;
                let decisions = self.decide_all(working, commands)?;
                let outcome = stage_decisions(working, append, &actor, decisions)?;
                Ok(JobOutcome::Write(outcome))
            }
            JobKind::Apply {
                desired,
                prune,
                dry_run,
                expected_revision,
            } => {
                check_global_revision(working, expected_revision)?;
                let planned = plan(working, *desired, prune, &self.secrets)?;
                let (changes, decisions): (Vec<PlannedChange>, Vec<Decision>) =
                    planned.into_iter().unzip();
                if dry_run || changes.is_empty() {
                    return Ok(JobOutcome::Apply(ApplyOutcome {
                        changes,
                        revision: working.revision,
                        applied: false,
                    }));
                }
                let outcome = stage_decisions(working, append, &actor, decisions)?;
                Ok(JobOutcome::Apply(ApplyOutcome {
                    changes,
                    revision: outcome.revision,
                    applied: true,
                }))
            }
        }
    }

    /// Decides commands in order, each against the state the previous ones produced.
    fn decide_all(
        &self,
        state: &State,
        commands: Vec<Command>,
    ) -> Result<Vec<Decision>, CommandError> {
        if commands.len() == 1 {
            let command = commands.into_iter().next().expect("one command");
            return Ok(vec![command.decide(state, &self.secrets)?]);
        }
        // Later commands must see earlier ones: decide against a scratch copy.
        let mut scratch = state.clone();
        let mut decisions = Vec::with_capacity(commands.len());
        for command in commands {
            let decision = command.decide(&scratch, &self.secrets)?;
            decision.preview(&mut scratch)?;
            decisions.push(decision);
        }
        Ok(decisions)
    }
}

fn check_global_revision(state: &State, expected: Option<u64>) -> Result<(), CommandError> {
    match expected {
        Some(expected) if expected != state.revision => Err(CommandError::RevisionConflict {
            aggregate: "configuration".to_owned(),
            expected,
            actual: state.revision,
        }),
        _ => Ok(()),
    }
}

/// Turns decisions into events on `working` and `append`, finding the secrets they drop.
fn stage_decisions(
    working: &mut State,
    append: &mut AppendBatch,
    actor: &str,
    decisions: Vec<Decision>,
) -> Result<WriteOutcome, CommandError> {
    let touched: BTreeSet<AggregateKey> = decisions.iter().map(|d| d.aggregate.clone()).collect();
    let before: BTreeSet<Uuid> = touched
        .iter()
        .flat_map(|key| working.secret_ids(key))
        .collect();
    let mut candidate = working.clone();
    let mut events = Vec::with_capacity(decisions.len());
    let mut new_keys = Vec::new();
    let mut aggregate_revision = 0;
    for decision in decisions {
        aggregate_revision = candidate.aggregate_revision(&decision.aggregate) + 1;
        let event = Event {
            id: Uuid::now_v7(),
            sequence: candidate.revision + 1,
            time: OffsetDateTime::now_utc(),
            actor: actor.to_owned(),
            aggregate: decision.aggregate,
            aggregate_revision,
            payload: decision.payload,
        };
        candidate
            .apply(&event)
            .map_err(|error| CommandError::Storage(error.to_string()))?;
        events.push(event);
        new_keys.extend(decision.new_keys);
    }
    let after: BTreeSet<Uuid> = touched
        .iter()
        .flat_map(|key| candidate.secret_ids(key))
        .collect();
    // Keys sealed by this job but already superseded within it never need storing.
    new_keys.retain(|(id, _)| after.contains(id));
    append.shredded.extend(before.difference(&after).copied());
    append.events.extend(events);
    append.new_keys.extend(new_keys);
    *working = candidate;
    Ok(WriteOutcome {
        revision: working.revision,
        aggregate_revision,
    })
}
