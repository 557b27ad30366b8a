//! The process's one reload thread: SIGHUP, [`super::Handle::reload_now`], every service's
//! certificate watch and ticket-key rotation, and, when the server runs from `--config FILE`, the
//! file read again on SIGHUP and when its contents change.
//!
//! A reload of the file parses it and builds every new or changed service whole (TLS context,
//! upstream resolved, a listener for each new address), and, on SIGHUP, every unchanged service's
//! new TLS context, before anything changes. Any failure changes nothing and is one error line
//! naming the file's line and column, or the service and file that failed, and "still serving the
//! previous configuration". Then it commits: unchanged services get their new context (today's
//! certificate reload, its lines unchanged), and the accept loop gets one batch ([`super::set`])
//! with the services added, removed and changed. Connections already open keep the service they
//! started with (they hold its `Shared`).
//!
//! Owns which services run and their certificate state; never accepts a connection and never
//! touches a listener the accept loop serves (it binds new ones only, and hands them over).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use log::{error, info, warn};
use openssl::sha::Sha256;

use super::listener::Listener;
use super::reload::{Trigger, Watched, trigger_name};
use super::service::{self, Process};
use super::set::{Change, Changes, Socket};
use crate::config::{self, Listen, Service};
use crate::metrics::Metrics;
use crate::tls;

/// What a reload did, for whoever asked with [`super::Handle::reload_now`] (the control socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadAnswer {
    /// Everything asked for is in service; `false`: nothing changed (a bad file), or a service's
    /// certificate could not be reloaded (flags alone) and that service serves its old one.
    pub ok: bool,
    /// What changed (services added, removed, changed; certificates replaced, with their expiry),
    /// or the error and [`STILL_SERVING`].
    pub lines: Vec<String>,
}

/// The last line of a reload of the file that changed nothing.
pub const STILL_SERVING: &str = "still serving the previous configuration";

/// What the reload thread is asked.
pub(super) enum Request {
    /// SIGHUP: reload, answer nobody.
    Signal,
    /// Reload and answer.
    Now(SyncSender<ReloadAnswer>),
}

/// One service running, as the reload thread knows it.
struct Running {
    config: Service,
    watched: Watched,
}

/// The configuration file and its digest.
struct FileWatch {
    path: PathBuf,
    /// The [`process`](config::Process) settings it gave at start: they change only by restart.
    process: config::Process,
    /// The contents' digest when last read (or tried).
    loaded: [u8; 32],
    /// At the last look: a change counts once it holds still for a whole interval.
    seen: [u8; 32],
    next_look: Option<Instant>,
}

/// The reload thread's state.
pub(super) struct Reconfigure {
    process: Arc<Process>,
    file: Option<FileWatch>,
    services: Vec<Running>,
    /// Every service's counters by name, kept for a service changed or removed and added again,
    /// so its series go on.
    metrics: HashMap<String, Arc<Metrics>>,
    changes: Changes,
}

/// The smallest watch interval of `services`: how often the file is looked at.
fn file_interval<'a>(services: impl Iterator<Item = &'a Service>) -> Option<Duration> {
    services.filter_map(|s| s.watch_interval).min()
}

/// A digest of the file's contents, or of why it cannot be read (so its return is a change too).
fn digest(path: &std::path::Path) -> [u8; 32] {
    let mut h = Sha256::new();
    match crate::config::read::read_config(path) {
        Ok(text) => {
            h.update(b"ok\0");
            h.update(text.as_bytes());
        }
        Err(e) => {
            h.update(b"err\0");
            h.update(e.as_bytes());
        }
    }
    h.finish()
}

/// The same address as far as a socket goes: a TCP address, or a UNIX socket's path. Port 0 is a
/// fresh port for each socket, so it is nobody's.
fn same_address(a: &Listen, b: &Listen) -> bool {
    match (a, b) {
        (Listen::Tcp(a), Listen::Tcp(b)) => a == b && a.port() != 0,
        (Listen::Unix(a), Listen::Unix(b)) => a.path == b.path,
        _ => false,
    }
}

impl Reconfigure {
    /// The thread's state at start: every service bound, with its certificates' watch.
    pub(super) fn new(
        process: Arc<Process>,
        config: &config::Config,
        bound: Vec<(Watched, Arc<service::Shared>)>,
        changes: Changes,
    ) -> Reconfigure {
        let file = config.process.config_file.clone().map(|path| {
            let every = file_interval(config.services.iter());
            let watching = match every {
                Some(every) => format!("on SIGHUP and when it changes (checked every {every:?})"),
                None => "on SIGHUP only (file watching off)".to_string(),
            };
            info!("reload: {} is read again {watching}", path.display());
            let loaded = digest(&path);
            FileWatch {
                path,
                process: config.process.clone(),
                loaded,
                seen: loaded,
                next_look: every.map(|e| Instant::now() + e),
            }
        });
        Reconfigure {
            process,
            file,
            metrics: config
                .services
                .iter()
                .zip(&bound)
                .map(|(s, (_, shared))| (s.name.clone(), Arc::clone(&shared.metrics)))
                .collect(),
            services: config
                .services
                .iter()
                .cloned()
                .zip(bound)
                .map(|(config, (watched, _))| Running { config, watched })
                .collect(),
            changes,
        }
    }

    /// Starts the thread; the returned sender asks it for reloads.
    pub(super) fn spawn(mut self) -> Result<Sender<Request>> {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("reload".into())
            .spawn(move || self.serve(&rx))
            .context("starting the reload thread")?;
        Ok(tx)
    }

    fn serve(&mut self, requests: &Receiver<Request>) {
        loop {
            let due = self
                .services
                .iter()
                .filter_map(|s| s.watched.due())
                .chain(self.file.as_ref().and_then(|f| f.next_look))
                .min();
            let event = match due {
                Some(at) => requests.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match event {
                Ok(Request::Signal) => drop(self.reload(Trigger::Signal)),
                Ok(Request::Now(answer)) => {
                    // Whoever asked may have given up; the reload is done either way.
                    let _ = answer.send(self.reload(Trigger::Control));
                }
                Err(RecvTimeoutError::Timeout) => self.on_time(Instant::now()),
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// What is due now: each service's look at its files or its ticket-key rotation, and a look
    /// at the configuration file.
    fn on_time(&mut self, now: Instant) {
        for s in &mut self.services {
            s.watched.on_time(now);
        }
        let Some(file) = &mut self.file else {
            return;
        };
        if file.next_look.is_none_or(|t| t > now) {
            return;
        }
        file.next_look = file_interval(self.services.iter().map(|s| &s.config)).map(|e| now + e);
        let now_digest = digest(&file.path);
        let changed = now_digest != file.loaded && now_digest == file.seen;
        file.seen = now_digest;
        if changed {
            drop(self.reload_file(Trigger::FileChange, false));
        }
    }

    /// A reload asked for: the file read again (with every unchanged service's certificates), or
    /// with flags alone every service's certificates.
    fn reload(&mut self, why: Trigger) -> ReloadAnswer {
        if self.file.is_some() {
            return self.reload_file(why, true);
        }
        let mut answer = ReloadAnswer {
            ok: true,
            lines: Vec::new(),
        };
        for s in &mut self.services {
            match s.watched.on_request(why) {
                Ok(line) => answer.lines.push(line),
                Err(line) => {
                    answer.ok = false;
                    answer.lines.push(line);
                }
            }
        }
        answer
    }

    /// The one line of a reload of the file that changed nothing.
    fn refused(&self, why: Trigger, what: &str) -> ReloadAnswer {
        let line = format!(
            "reload failed trigger={}: {what}; {STILL_SERVING}",
            trigger_name(why)
        );
        error!("{line}");
        for s in &self.services {
            s.watched.metrics().reload(false);
        }
        ReloadAnswer {
            ok: false,
            lines: vec![format!("reload failed: {what}"), STILL_SERVING.to_string()],
        }
    }

    /// Reads the file again and, when every service it names builds, puts it in service;
    /// `certificates`: unchanged services rebuild their TLS context too (SIGHUP), else they keep
    /// theirs (a change of the file).
    fn reload_file(&mut self, why: Trigger, certificates: bool) -> ReloadAnswer {
        let Some(file) = &mut self.file else {
            return self.reload(why);
        };
        let path = file.path.clone();
        file.loaded = digest(&path);
        file.seen = file.loaded;
        let config = match config::load_file(&path) {
            Ok(config) => config,
            Err(line) => return self.refused(why, &line),
        };
        let plan = match self.prepare(&config, certificates) {
            Ok(plan) => plan,
            Err(e) => {
                return self.refused(why, &format!("{}: {e:#}", path.display()));
            }
        };
        self.commit(config, plan, why)
    }

    /// Whether a running service listens on `listen`'s address now.
    fn held(&self, listen: &Listen) -> bool {
        self.services
            .iter()
            .any(|s| same_address(&s.config.listen, listen))
    }

    /// Builds whatever the new configuration needs, changing nothing.
    fn prepare(&mut self, config: &config::Config, certificates: bool) -> Result<Vec<Step>> {
        let by_name: HashMap<String, usize> = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.config.name.clone(), i))
            .collect();
        let mut contexts = if certificates {
            let wanted: HashMap<&str, &Service> = config
                .services
                .iter()
                .map(|n| (n.name.as_str(), n))
                .collect();
            let unchanged: Vec<bool> = self
                .services
                .iter()
                .map(|s| wanted.get(s.config.name.as_str()) == Some(&&s.config))
                .collect();
            rebuild(&mut self.services, &unchanged)
        } else {
            Vec::new()
        };
        let mut steps = Vec::with_capacity(config.services.len());
        for new in &config.services {
            let index = by_name.get(&new.name).copied();
            let step = match index {
                Some(i) if self.services[i].config == *new => Step::Unchanged {
                    index: i,
                    tls: contexts
                        .get_mut(i)
                        .and_then(Option::take)
                        .transpose()
                        .with_context(|| format!("service={}", new.name))?,
                },
                _ => {
                    // Made once per name, even when this reload fails: a later one reuses them.
                    let families = &self.process.families;
                    let metrics = Arc::clone(
                        self.metrics
                            .entry(new.name.clone())
                            .or_insert_with(|| Arc::new(families.service(&new.name))),
                    );
                    let built = service::build(new, &self.process, Some(metrics))
                        .with_context(|| format!("service={}", new.name))?;
                    let keeps = index.is_some_and(|i| self.services[i].config.listen == new.listen);
                    let socket = if keeps {
                        Socket::Keep
                    } else if self.held(&new.listen) {
                        Socket::Later
                    } else {
                        Socket::Bound(
                            Listener::bind(&new.listen, new.backlog)
                                .with_context(|| format!("service={}", new.name))?,
                        )
                    };
                    Step::Build {
                        index,
                        built: Box::new(built),
                        socket,
                    }
                }
            };
            steps.push(step);
        }
        Ok(steps)
    }

    /// Puts a prepared configuration in service; says what changed.
    fn commit(&mut self, config: config::Config, steps: Vec<Step>, why: Trigger) -> ReloadAnswer {
        let mut answer = ReloadAnswer {
            ok: true,
            lines: Vec::new(),
        };
        let mut batch = Vec::new();
        let mut old: Vec<Option<Running>> = std::mem::take(&mut self.services)
            .into_iter()
            .map(Some)
            .collect();
        let mut running = Vec::with_capacity(steps.len());
        let (mut added, mut changed, mut unchanged) = (Vec::new(), Vec::new(), 0usize);
        for (new, step) in config.services.into_iter().zip(steps) {
            match step {
                Step::Unchanged { index, tls } => {
                    // Each index is taken once: names are unique in a file.
                    let Some(mut s) = old[index].take() else {
                        continue;
                    };
                    if let Some(tls) = tls {
                        match s.watched.finish(why, Ok(tls)) {
                            Ok(line) => answer.lines.push(line),
                            Err(line) => {
                                answer.ok = false;
                                answer.lines.push(line);
                            }
                        }
                    }
                    unchanged += 1;
                    running.push(s);
                }
                Step::Build {
                    index,
                    built,
                    socket,
                } => {
                    let what = if index.is_some() { "changed" } else { "added" };
                    let line = format!(
                        "service={} {what}: {}{}",
                        new.name,
                        built.certificate,
                        if index.is_some() {
                            " (new connections get the new settings; open ones keep theirs)"
                        } else {
                            ""
                        }
                    );
                    info!("reload: {line}");
                    answer.lines.push(line);
                    if let Some(i) = index {
                        old[i] = None;
                        changed.push(new.name.clone());
                    } else {
                        added.push(new.name.clone());
                    }
                    batch.push(Change::Put {
                        shared: Arc::clone(&built.shared),
                        socket,
                        service: Box::new(new.clone()),
                    });
                    running.push(Running {
                        config: new,
                        watched: built.watched,
                    });
                }
            }
        }
        let mut removed = Vec::new();
        for s in old.into_iter().flatten() {
            let line = format!(
                "service={} removed (stops accepting; its open connections finish)",
                s.config.name
            );
            info!("reload: {line}");
            answer.lines.push(line);
            removed.push(s.config.name.clone());
            batch.insert(
                0,
                Change::Remove {
                    name: s.config.name,
                },
            );
        }
        self.services = running;
        if !batch.is_empty() {
            self.changes.send(batch);
        }
        if let Some(file) = &mut self.file {
            let mut process = config.process.clone();
            process.config_file.clone_from(&file.process.config_file);
            if process != file.process {
                let line =
                    "the [process] table changed: it takes effect at the next start".to_string();
                warn!("reload: {line}");
                answer.lines.push(line);
            }
            if file.next_look.is_none() {
                file.next_look = file_interval(self.services.iter().map(|s| &s.config))
                    .map(|e| Instant::now() + e);
            }
            let name = |v: &[String]| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(",")
                }
            };
            let line = format!(
                "reload ok trigger={} file={}: added={} removed={} changed={} unchanged={unchanged}",
                trigger_name(why),
                file.path.display(),
                name(&added),
                name(&removed),
                name(&changed),
            );
            info!("{line}");
            answer.lines.insert(0, line);
        }
        answer
    }
}

/// The new TLS context of each service `unchanged` marks (`None` for the others), built on a few
/// threads at once: a reload of a file with many services takes its builds' time divided by the
/// cores, as one reload thread a service did, without a thread a service.
fn rebuild(services: &mut [Running], unchanged: &[bool]) -> Vec<Option<Result<tls::Tls>>> {
    let threads = thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .clamp(1, MAX_BUILDERS);
    let per = services.len().div_ceil(threads).max(1);
    // A new cache a builder: each distinct context is built at most once per thread in this
    // pass (1,000 services on one certificate: a few builds, not 1,000), and the threads never
    // wait on each other's builds.
    let build = |chunk: &mut [Running], marks: &[bool]| -> Vec<Option<Result<tls::Tls>>> {
        let mut cache = tls::Cache::new();
        chunk
            .iter_mut()
            .zip(marks)
            .map(|(s, &mark)| mark.then(|| s.watched.prepare(&mut cache)))
            .collect()
    };
    if services.len() <= per {
        return build(services, unchanged);
    }
    thread::scope(|scope| {
        let running: Vec<_> = services
            .chunks_mut(per)
            .zip(unchanged.chunks(per))
            .map(|(chunk, marks)| {
                thread::Builder::new()
                    .name("reload-build".into())
                    .spawn_scoped(scope, move || build(chunk, marks))
            })
            .collect();
        let mut built = Vec::with_capacity(unchanged.len());
        for (i, spawned) in running.into_iter().enumerate() {
            let start = i * per;
            let len = per.min(unchanged.len() - start);
            match spawned.map_err(anyhow::Error::from).map(|h| h.join()) {
                Ok(Ok(part)) => built.extend(part),
                // A builder that could not start, or panicked: its services say so, and the
                // reload changes nothing.
                _ => built.extend(unchanged[start..start + len].iter().map(|&mark| {
                    mark.then(|| Err(anyhow::anyhow!("building the new TLS context failed")))
                })),
            }
        }
        built
    })
}

/// The most threads one reload builds TLS contexts on.
const MAX_BUILDERS: usize = 8;

/// What a reload does for one service of the new file, prepared before anything changes.
enum Step {
    /// The same service as now (maybe with its new TLS context, built).
    Unchanged { index: usize, tls: Option<tls::Tls> },
    /// A service added (`index` `None`) or changed, built whole, with its socket.
    Build {
        index: Option<usize>,
        built: Box<service::Built>,
        socket: Socket,
    },
}
