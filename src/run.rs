//! `aer run`: the long-running service. Sources (HTTP ingest through the API, standard input,
//! followed files) feed a bounded ingest queue; the sequencer task de-duplicates and orders the
//! events behind the watermark and drives the live dataflow ([`crate::dataflow::live`]); final
//! anomalies and decisions update the API's view, the decision stream and the metrics, and go to
//! the response stage, which coalesces notifications by event time and runs the jobs from its
//! store. SIGINT/SIGTERM (or the caller's shutdown future) stop the sources, make every time up
//! to the newest event final, hand the last decisions to the response stage, send the held
//! digests and drain the job queue.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::api::{self, Auth, Ingest, Shared};
use crate::config::{Config, ConfigError, ServiceConfig};
use crate::dataflow::live::{Command, Live, LiveSettings, Output};
use crate::dataflow::EngineError;
use crate::io::asn::{AsnError, AsnTable};
use crate::io::sequencer::Sequencer;
use crate::io::slack_audit::{PollError, Poller, SlackAuditConfig};
use crate::model::decision::Decision;
use crate::model::{Sequenced, Time};
use crate::replay::{heuristic_setup, ReplayError};
use crate::response::config::{ResponseConfigError, ResponseSetup};
use crate::response::notify::Coalescer;
use crate::response::reset::Backend;
use crate::response::store::{JobStore, StoreError};
use crate::response::{self, Responders, RetryPolicy};

/// Everything that can stop the service from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Response(#[from] ResponseConfigError),
    #[error(transparent)]
    Setup(#[from] ReplayError),
    #[error(transparent)]
    Asn(#[from] AsnError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
    #[error("a service thread panicked")]
    Panicked,
    #[error("{0}")]
    Token(String),
    #[error(transparent)]
    Poll(#[from] PollError),
}

/// What `aer run` is asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config: Config,
    pub workers: usize,
    /// The API and HTTP ingest address.
    pub listen: SocketAddr,
    /// The response stage's job store.
    pub db: PathBuf,
    /// Read events from standard input.
    pub stdin: bool,
    /// Files to follow.
    pub follow: Vec<PathBuf>,
    pub auth: Auth,
    /// Ingest queue capacity, in batches (a request or a read of up to 4,096 lines each).
    pub queue: usize,
    /// Largest HTTP request body, bytes.
    pub max_body: usize,
    /// Without input for this long (wall clock), the watermark moves up to the newest event, so
    /// the last events' results become final.
    pub idle_flush: Duration,
    /// The Slack Audit Logs API poller, if configured.
    pub slack_audit: Option<SlackAuditConfig>,
}

impl RunOptions {
    pub fn new(config: Config) -> RunOptions {
        RunOptions {
            config,
            workers: 1,
            listen: ([127, 0, 0, 1], 8080).into(),
            db: PathBuf::from("aer.db"),
            stdin: false,
            follow: Vec::new(),
            auth: Auth::default(),
            queue: 256,
            max_body: 10 << 20,
            idle_flush: Duration::from_secs(5),
            slack_audit: None,
        }
    }
}

/// Runs the service until `shutdown` completes; `bound` learns the listening address.
pub async fn run(
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), RunError> {
    let config = options.config.clone();
    // Everything is checked before anything starts.
    let rules = config.rules()?;
    let policies = config.policies()?;
    let asn_table = match &config.detectors.asn_table {
        Some(path) => Some(AsnTable::load(path)?),
        None => None,
    };
    let (heuristics, tor) = heuristic_setup(&config.detectors, asn_table.is_some())?;
    let ResponseSetup {
        responders,
        retry,
        coalescer,
    } = ResponseSetup::new(&config.response, &config.notifications)?;
    let writer = JobStore::open(&options.db)?;
    let reader = JobStore::open(&options.db)?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: options.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(RunError::Serve)?;

    let (outputs_tx, outputs_rx) = std_mpsc::channel::<Output>();
    let live = Live::start(
        LiveSettings {
            workers: options.workers,
            heuristics,
            session_expiry: config.engine.session_expiry.as_secs(),
        },
        outputs_tx,
    )?;
    live.send(Command::Rules(rules));
    live.send(Command::Policies(policies));
    live.send(Command::Tor(tor.unwrap_or_default()));

    let (queue_tx, queue_rx) = mpsc::channel::<Ingest>(options.queue.max(1));
    let mut shared = Shared::new(config.clone(), options.auth.clone());
    shared.frontier = live.frontier();
    shared.live_state = Some(live.state());
    shared.store = Some(Mutex::new(reader));
    shared.ingest = Some(queue_tx.clone());
    shared.max_body = options.max_body;
    let shared = Arc::new(shared);

    // Final outputs: the view, the metrics, the stream, the response stage.
    let (decisions_tx, decisions_rx) = std_mpsc::channel::<ToResponse>();
    let outputs = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            for output in outputs_rx {
                match output {
                    Output::Anomaly(a) => {
                        shared
                            .metrics
                            .anomalies
                            .get_or_create(&api::metrics::ReasonLabel {
                                reason: a.reason.clone(),
                            })
                            .inc();
                        tracing::info!(anomaly_id = %a.id, enterprise = %a.enterprise, user = %a.user, reason = %a.reason, detected_at = a.detected_at, observed = a.observed, threshold = a.threshold, "anomaly");
                        shared.view.write().expect("view").add_anomaly(a);
                    }
                    Output::Decision(d) => {
                        shared
                            .metrics
                            .decisions
                            .get_or_create(&api::metrics::OutcomeLabel {
                                outcome: d.outcome.as_str().into(),
                            })
                            .inc();
                        tracing::info!(decision_id = %d.id, enterprise = %d.enterprise, user = %d.user, outcome = d.outcome.as_str(), decided_at = d.decided_at, "decision");
                        shared.view.write().expect("view").add_decision(d.clone());
                        shared.publish(&d);
                        let _ = decisions_tx.send(ToResponse::Decision(Box::new(d)));
                    }
                    Output::Final(t) => {
                        let _ = decisions_tx.send(ToResponse::Final(t));
                    }
                }
            }
        })
    };

    let response = {
        let drain_timeout = config.response.drain_timeout;
        std::thread::spawn(move || {
            response_loop(
                writer,
                responders,
                retry,
                coalescer,
                decisions_rx,
                drain_timeout,
            )
        })
    };

    // Sources.
    let stop_sources = Arc::new(AtomicBool::new(false));
    let mut sources = Vec::new();
    if options.stdin {
        sources.push(crate::io::live::stdin(
            queue_tx.clone(),
            shared.metrics_handle(),
        ));
    }
    for path in &options.follow {
        sources.push(crate::io::live::follow(
            path.clone(),
            Duration::from_millis(250),
            queue_tx.clone(),
            shared.metrics_handle(),
            stop_sources.clone(),
        ));
    }
    let poll_stop = Arc::new(Notify::new());
    let poller = match &options.slack_audit {
        Some(settings) => {
            let poller = Poller::new(
                settings.clone(),
                &options.db,
                queue_tx.clone(),
                shared.metrics_handle(),
            )?;
            let stop = poll_stop.clone();
            Some(tokio::spawn(
                poller.run(async move { stop.notified().await }),
            ))
        }
        None => None,
    };
    drop(queue_tx);

    let stop = Arc::new(Notify::new());
    let sequencer = tokio::spawn(sequence(
        queue_rx,
        live,
        asn_table,
        Sequencer::new(
            Some(config.engine.lateness.as_secs()),
            config.engine.dedup_horizon.as_secs(),
        ),
        shared.clone(),
        options.idle_flush,
        stop.clone(),
    ));

    shared.ready.store(true, Ordering::Relaxed);
    tracing::warn!(address = %local, workers = options.workers, db = %options.db.display(), "aer run: serving");
    if let Some(bound) = bound {
        let _ = bound.send(local);
    }
    let closing = shared.clone();
    axum::serve(listener, api::router(shared.clone()))
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::warn!("shutting down: draining the dataflow and the job queue");
            closing.ready.store(false, Ordering::Relaxed);
            closing.close_stream();
        })
        .await
        .map_err(RunError::Serve)?;

    stop_sources.store(true, Ordering::Relaxed);
    poll_stop.notify_one();
    if let Some(poller) = poller {
        poller.await.map_err(|_| RunError::Panicked)??;
    }
    stop.notify_one();
    sequencer.await.map_err(|_| RunError::Panicked)??;
    tokio::task::spawn_blocking(move || {
        outputs.join().map_err(|_| RunError::Panicked)?;
        response.join().map_err(|_| RunError::Panicked)?
    })
    .await
    .map_err(|_| RunError::Panicked)??;
    // Sources blocked on stdin cannot be interrupted; the others have stopped.
    drop(sources);
    tracing::warn!("aer run: stopped");
    Ok(())
}

/// The sequencer task: de-duplicates and orders events behind the watermark, drives the live
/// dataflow, and at the end makes everything final and stops it.
async fn sequence(
    mut queue: mpsc::Receiver<Ingest>,
    live: Live,
    asn: Option<AsnTable>,
    mut sequencer: Sequencer,
    shared: Arc<Shared>,
    idle_flush: Duration,
    stop: Arc<Notify>,
) -> Result<(), RunError> {
    let mut counted = sequencer.stats().clone();
    let apply = |ingest: Ingest, sequencer: &mut Sequencer, live: &Live| match ingest {
        Ingest::Events { events, .. } => {
            let mut released = Vec::with_capacity(events.len());
            for mut event in events {
                if let Some(table) = &asn {
                    event.asn = event.ip.as_deref().and_then(|ip| table.lookup(ip));
                }
                shared.newest.fetch_max(event.time, Ordering::Relaxed);
                sequencer.push(event, &mut released);
            }
            for s in released.drain(..) {
                live.send(Command::Event(s));
            }
            live.send(Command::Advance(sequencer.watermark()));
        }
        Ingest::Policies(p) => {
            live.send(Command::Policies(p));
        }
    };
    loop {
        tokio::select! {
            message = queue.recv() => match message {
                Some(ingest) => apply(ingest, &mut sequencer, &live),
                None => break,
            },
            _ = stop.notified() => break,
            _ = tokio::time::sleep(idle_flush) => {
                // Quiet: the newest second is complete. Events that still arrive for it or
                // earlier are late and processed at the next second, as any late event is.
                let newest = shared.newest.load(Ordering::Relaxed);
                if newest + 1 > sequencer.watermark() && newest > 0 {
                    let mut released: Vec<Sequenced> = Vec::new();
                    sequencer.advance(newest + 1, &mut released);
                    for s in released.drain(..) {
                        live.send(Command::Event(s));
                    }
                    live.send(Command::Advance(sequencer.watermark()));
                }
            }
        }
        let stats = sequencer.stats();
        shared.metrics.late.inc_by(stats.late - counted.late);
        shared
            .metrics
            .duplicates
            .inc_by(stats.duplicates - counted.duplicates);
        counted = stats.clone();
    }
    // Whatever is already queued is still taken in.
    queue.close();
    while let Some(ingest) = queue.recv().await {
        apply(ingest, &mut sequencer, &live);
    }
    let mut released: Vec<Sequenced> = Vec::new();
    let end = sequencer.finish(&mut released);
    for s in released.drain(..) {
        live.send(Command::Event(s));
    }
    live.send(Command::Advance(end));
    tokio::task::spawn_blocking(move || live.finish())
        .await
        .map_err(|_| RunError::Panicked)??;
    Ok(())
}

/// What the response stage's thread is told, in order.
enum ToResponse {
    Decision(Box<Decision>),
    /// Every decision up to this event time has come: held digests due by then go out.
    Final(Time),
}

/// The response stage's thread: decisions in, coalesced notifications and jobs out, jobs run as
/// they fall due; at the end, the held digests are sent and the queue drained.
fn response_loop(
    store: JobStore,
    responders: Responders<Backend>,
    retry: RetryPolicy,
    mut coalescer: Coalescer,
    messages: std_mpsc::Receiver<ToResponse>,
    drain_timeout: Duration,
) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| RunError::Panicked)?;
    let mut open = true;
    while open {
        let mut batch = Vec::new();
        match messages.recv_timeout(Duration::from_millis(500)) {
            Ok(m) => batch.push(m),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => open = false,
        }
        batch.extend(messages.try_iter());
        let (mut decisions, mut notifications) = (Vec::new(), Vec::new());
        for message in batch {
            match message {
                ToResponse::Decision(d) => {
                    notifications.extend(coalescer.offer(&d));
                    decisions.push(*d);
                }
                ToResponse::Final(t) => notifications.extend(coalescer.advance_to(t)),
            }
        }
        if !open {
            notifications.extend(coalescer.finish());
        }
        if !decisions.is_empty() || !notifications.is_empty() {
            response::accept(&store, &decisions, &notifications, response::now_ms())?;
        }
        runtime.block_on(response::run_due(
            &store,
            &responders,
            &retry,
            response::now_ms(),
        ))?;
    }
    runtime.block_on(response::drain(&store, &responders, &retry, drain_timeout))?;
    Ok(())
}

/// The tokens of `[service]`, read from the environment. The admin token may be unset (admin
/// endpoints then refuse every request, with a warning); a configured read or ingest token
/// variable must be set.
pub fn auth_from_env(service: &ServiceConfig) -> Result<Auth, RunError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let need = |name: &str, what: &str| {
        var(name).ok_or_else(|| {
            RunError::Token(format!("{what}: environment variable {name} is not set"))
        })
    };
    let admin = var(&service.admin_token_env);
    if admin.is_none() {
        tracing::warn!(variable = %service.admin_token_env, "no admin token: admin endpoints refuse every request");
    }
    let ingest = match &service.ingest_token_env {
        Some(name) => Some(need(name, "[service] ingest_token_env")?),
        None => None,
    };
    if ingest.is_some() && ingest == admin {
        return Err(RunError::Token(
            "the ingest token is also the admin token".into(),
        ));
    }
    let mut readers = std::collections::BTreeMap::new();
    for (enterprise, name) in &service.read_token_env {
        let token = need(name, &format!("[service.read_token_env] {enterprise}"))?;
        let reused = admin.as_ref() == Some(&token)
            || ingest.as_ref() == Some(&token)
            || readers.contains_key(&token);
        if reused {
            return Err(RunError::Token(format!(
                "the read token of {enterprise} is also another token"
            )));
        }
        readers.insert(token, enterprise.clone());
    }
    Ok(Auth {
        admin,
        readers,
        ingest,
    })
}

/// Waits for SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
