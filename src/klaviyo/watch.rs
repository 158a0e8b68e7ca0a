//! Waiting for bulk import jobs, all of them with one poll: instead of a `GET` per job, one
//! `GET /api/profile-bulk-import-jobs?filter=equals(status,"complete")&sort=-created_at`
//! answers for every job in flight. A job the list does not show for a while (over 100 jobs
//! completed meanwhile, or cancelled) is asked about on its own.
//!
//! In: job ids from the batches in flight. Out: each job once it is done. Network I/O through
//! the shared `Client`, budgeted against the list endpoint's own M-tier limit (not the imports').

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::ratelimit::Tier;
use super::{BulkJob, Client, KlaviyoError, encode};
use reqwest::Method;

/// Longest a job may take before kdit gives up on it.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30 * 60);
/// Polls a job may go unseen in the list before it is asked about alone.
const UNSEEN_POLLS: u32 = 8;

type Reply = oneshot::Sender<Result<BulkJob, KlaviyoError>>;

/// A handle to the watcher task; cheap to clone.
#[derive(Clone)]
pub struct Watcher {
    tx: mpsc::UnboundedSender<(String, Reply)>,
}

impl Watcher {
    /// Starts the watcher; it stops when every handle is dropped and nothing is pending.
    pub fn start(client: Client, interval: Duration) -> Watcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, interval, rx));
        Watcher { tx }
    }

    /// Waits until the job is done (complete or cancelled).
    pub async fn wait(&self, job: BulkJob) -> Result<BulkJob, KlaviyoError> {
        if job.is_done() {
            return Ok(job);
        }
        let (reply, rx) = oneshot::channel();
        let gone = || KlaviyoError::GaveUp {
            request: format!("GET /api/profile-bulk-import-jobs/{}", job.id),
            attempts: 0,
            last: "the job watcher stopped".into(),
        };
        self.tx.send((job.id.clone(), reply)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

struct Pending {
    reply: Reply,
    since: Instant,
    unseen: u32,
}

async fn run(client: Client, interval: Duration, mut rx: mpsc::UnboundedReceiver<(String, Reply)>) {
    let mut pending: HashMap<String, Pending> = HashMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some((id, reply)) => {
                    pending.insert(
                        id,
                        Pending {
                            reply,
                            since: Instant::now(),
                            unseen: 0,
                        },
                    );
                }
                None => return,
            }
        }
        tokio::time::sleep(interval).await;
        while let Ok((id, reply)) = rx.try_recv() {
            pending.insert(
                id,
                Pending {
                    reply,
                    since: Instant::now(),
                    unseen: 0,
                },
            );
        }
        match recently_completed(&client).await {
            Ok(done) => {
                for job in done {
                    if let Some(p) = pending.remove(&job.id) {
                        let _ = p.reply.send(Ok(job));
                    }
                }
            }
            Err(e) => {
                // The list failed after the client's retries: answer every waiter alike.
                let text = e.to_string();
                for (_, p) in pending.drain() {
                    let _ = p.reply.send(Err(KlaviyoError::GaveUp {
                        request: "GET /api/profile-bulk-import-jobs".into(),
                        attempts: 0,
                        last: text.clone(),
                    }));
                }
                continue;
            }
        }
        let mut alone = Vec::new();
        for (id, p) in pending.iter_mut() {
            p.unseen += 1;
            if p.unseen >= UNSEEN_POLLS {
                alone.push(id.clone());
            }
        }
        for id in alone {
            let result = client.bulk_import(&id).await;
            match result {
                Ok(job) if job.is_done() => {
                    if let Some(p) = pending.remove(&id) {
                        let _ = p.reply.send(Ok(job));
                    }
                }
                Ok(_) => {
                    let expired = pending
                        .get(&id)
                        .is_some_and(|p| p.since.elapsed() > GIVE_UP_AFTER);
                    if expired {
                        if let Some(p) = pending.remove(&id) {
                            let _ = p.reply.send(Err(KlaviyoError::GaveUp {
                                request: format!("GET /api/profile-bulk-import-jobs/{id}"),
                                attempts: 0,
                                last: "the bulk import job did not finish within 30 minutes".into(),
                            }));
                        }
                    } else if let Some(p) = pending.get_mut(&id) {
                        p.unseen = 0;
                    }
                }
                Err(e) => {
                    if let Some(p) = pending.remove(&id) {
                        let _ = p.reply.send(Err(e));
                    }
                }
            }
        }
    }
}

/// The account's most recently completed bulk import jobs (up to 100), newest first.
async fn recently_completed(client: &Client) -> Result<Vec<BulkJob>, KlaviyoError> {
    let path = format!(
        "/api/profile-bulk-import-jobs?filter={}&sort=-created_at&page%5Bsize%5D=100",
        encode("equals(status,\"complete\")")
    );
    let r = client
        .send(
            Tier::M,
            Method::GET,
            &path,
            "GET /api/profile-bulk-import-jobs",
            None,
        )
        .await?;
    let body = r.body.unwrap_or(Value::Null);
    Ok(body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(BulkJob::from_resource)
        .collect())
}
