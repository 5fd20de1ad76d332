//! The Docker provider (bollard): swarm services and their running tasks when the engine is
//! a swarm manager, plain containers otherwise, each with its `com.docker.lb.*` labels.
//!
//! Convergence: Docker events (service, container, network, node) trigger a debounced
//! re-list; Swarm emits no task events, so a cheap poll (default 1 s) backs them: in swarm
//! mode a poll asks for the task list alone, against the services and networks listed at
//! the last event (they change only with events). Every (re)connect starts with a full
//! resync. A service or node event (an update, a scale, a
//! drain) is followed by the orchestrator setting old tasks' desired state to `shutdown`
//! within moments, and those tasks must leave the routes before their containers are told
//! to stop: for a few seconds after one ([`DockerOptions::hurry_for`]) the poll runs fast
//! ([`DockerOptions::hurry_interval`], see [`PollSchedule`]). When the engine is gone the
//! last published state stays (so the table keeps serving), and the provider reconnects
//! with backoff, reporting it in logs and in `interlock_docker_up`.

mod containers;
mod proxies;
mod replicas;
mod swarm;
pub mod tasks;

use std::sync::Arc;
use std::time::Duration;

use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptionsBuilder;
use bollard::Docker;
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream_lite::next;

use crate::config::DesiredState;
use crate::metrics::Metrics;

pub use replicas::controller_replicas;

/// Why a snapshot of the engine could not be taken.
#[derive(Debug, Error)]
pub enum DockerError {
    #[error("cannot connect to the Docker engine: {0}")]
    Connect(#[source] bollard::errors::Error),
    #[error("Docker API call {call} failed: {source}")]
    Api {
        call: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
}

fn api(call: &'static str) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    move |source| DockerError::Api { call, source }
}

/// Which workloads the provider reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DockerMode {
    /// Swarm services on a swarm manager, plain containers otherwise.
    #[default]
    Auto,
    Swarm,
    Containers,
}

/// Settings of the Docker provider.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    pub mode: DockerMode,
    /// Task poll interval (Swarm has no task events).
    pub poll_interval: Duration,
    /// Events within this window are folded into one re-list.
    pub debounce: Duration,
    /// Task poll interval for [`hurry_for`](Self::hurry_for) after a service or node event.
    pub hurry_interval: Duration,
    /// How long the poll stays fast after a service or node event.
    pub hurry_for: Duration,
    /// Check each swarm service against the swarm's proxy services (their clusters and
    /// networks); for the controller and `check`, not for an instance that is the proxy.
    pub check_proxies: bool,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            mode: DockerMode::Auto,
            poll_interval: Duration::from_secs(1),
            debounce: Duration::from_millis(50),
            hurry_interval: Duration::from_millis(100),
            hurry_for: Duration::from_secs(3),
            check_proxies: false,
        }
    }
}

/// Connects using `DOCKER_HOST` or the local unix socket, at the engine's API version.
pub async fn connect() -> Result<Docker, DockerError> {
    let docker = Docker::connect_with_defaults().map_err(DockerError::Connect)?;
    docker
        .negotiate_version()
        .await
        .map_err(DockerError::Connect)
}

/// One complete view of the engine's labelled workloads.
pub async fn snapshot(
    docker: &Docker,
    mode: DockerMode,
    check_proxies: bool,
) -> Result<DesiredState, DockerError> {
    read(docker, mode, check_proxies, &mut None).await
}

/// A complete view. In swarm mode with `listing` set (a task poll), only the task list is
/// asked for, against the services and networks listed last; otherwise everything is
/// listed, and `listing` keeps the services and networks for the next polls.
async fn read(
    docker: &Docker,
    mode: DockerMode,
    check_proxies: bool,
    listing: &mut Option<swarm::Listing>,
) -> Result<DesiredState, DockerError> {
    if let Some(last) = listing.as_ref() {
        return swarm::snapshot(docker, last, check_proxies).await;
    }
    let swarm = match mode {
        DockerMode::Swarm => true,
        DockerMode::Containers => false,
        DockerMode::Auto => {
            let info = docker.info().await.map_err(api("info"))?;
            info.swarm
                .as_ref()
                .and_then(|s| s.control_available)
                .unwrap_or(false)
        }
    };
    if swarm {
        let listed = listing.insert(swarm::list(docker).await?);
        swarm::snapshot(docker, listed, check_proxies).await
    } else {
        containers::snapshot(docker).await
    }
}

/// Runs forever: keeps `tx` at the engine's current state.
pub async fn run(opts: DockerOptions, tx: watch::Sender<DesiredState>, metrics: Arc<Metrics>) {
    let mut backoff = Duration::from_millis(200);
    let mut reported = false;
    loop {
        match converge(&opts, &tx, &metrics, &mut reported).await {
            Ok(()) => return, // every receiver is gone
            Err(e) => {
                metrics.docker_up.set(0);
                metrics.docker_errors.inc();
                tracing::error!(error = %e, retry_in = ?backoff, "Docker engine unavailable; serving the last good routes");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One connection's life: resync, then follow events and the poll until an error.
async fn converge(
    opts: &DockerOptions,
    tx: &watch::Sender<DesiredState>,
    metrics: &Metrics,
    reported: &mut bool,
) -> Result<(), DockerError> {
    let docker = connect().await?;
    // Swarm's services and networks as listed at the last event (see `read`).
    let mut listing = None;
    let first = read(&docker, opts.mode, opts.check_proxies, &mut listing).await?;
    if *reported {
        publish(tx, first, metrics);
    } else {
        // The first list is news even when it is empty: a controller waits for it before
        // serving any snapshot.
        metrics.docker_resyncs.inc();
        tx.send_replace(first);
        *reported = true;
    }
    metrics.docker_up.set(1);
    tracing::info!("connected to the Docker engine; following events");

    let filters = std::collections::HashMap::from([(
        "type",
        vec!["service", "container", "network", "node"],
    )]);
    let mut events =
        Box::pin(docker.events(Some(EventsOptionsBuilder::new().filters(&filters).build())));
    let mut schedule = PollSchedule::new(opts);
    let mut next_poll = schedule.next_poll(Instant::now());
    loop {
        // When the change was seen: the first event of a burst, else this poll.
        let mut observed_at = None;
        let mut event = false;
        tokio::select! {
            ev = next(&mut events) => match ev {
                Some(Ok(first)) => {
                    event = true;
                    observed_at = first
                        .time_nano
                        .map(|ns| ns as f64 / 1e9)
                        .filter(|t| *t > 0.0);
                    schedule.saw(&first, Instant::now());
                    // Fold a burst of events (a stack deploy) into one re-list.
                    let deadline = tokio::time::sleep(opts.debounce);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => break,
                            more = next(&mut events) => match more {
                                Some(Ok(more)) => {
                                    schedule.saw(&more, Instant::now());
                                    continue;
                                }
                                Some(Err(e)) => return Err(api("events")(e)),
                                None => return Err(stream_ended()),
                            },
                        }
                    }
                }
                Some(Err(e)) => return Err(api("events")(e)),
                None => return Err(stream_ended()),
            },
            _ = tokio::time::sleep_until(next_poll) => {}
        }
        if tx.is_closed() {
            return Ok(());
        }
        // An event may have changed services or networks: list them again. A poll only
        // asks for the tasks.
        if event {
            listing = None;
        }
        let observed_at = observed_at.or(Some(crate::config::unix_now()));
        let mut state = read(&docker, opts.mode, opts.check_proxies, &mut listing).await?;
        state.observed_at = observed_at;
        publish(tx, state, metrics);
        next_poll = schedule.next_poll(Instant::now());
    }
}

/// When the next task poll is due: the normal interval, or the fast one for a while after
/// a service or node event (when Swarm is about to shut tasks down). Bounded: the fast
/// window ends [`DockerOptions::hurry_for`] after the last such event.
#[derive(Debug)]
struct PollSchedule {
    normal: Duration,
    fast: Duration,
    hurry_for: Duration,
    hurry_until: Option<Instant>,
}

impl PollSchedule {
    fn new(opts: &DockerOptions) -> Self {
        PollSchedule {
            normal: opts.poll_interval,
            fast: opts.hurry_interval.min(opts.poll_interval),
            hurry_for: opts.hurry_for,
            hurry_until: None,
        }
    }

    /// Notes an event seen at `now`: a service or node event starts (or extends) the fast
    /// window.
    fn saw(&mut self, ev: &EventMessage, now: Instant) {
        if matches!(
            ev.typ,
            Some(EventMessageTypeEnum::SERVICE | EventMessageTypeEnum::NODE)
        ) {
            self.hurry_until = Some(now + self.hurry_for);
        }
    }

    /// The next poll after a re-list at `now`.
    fn next_poll(&mut self, now: Instant) -> Instant {
        match self.hurry_until {
            Some(until) if now < until => now + self.fast,
            _ => {
                self.hurry_until = None;
                now + self.normal
            }
        }
    }
}

/// Network IDs the service's tasks are attached to.
fn service_networks(s: &bollard::models::Service) -> Vec<String> {
    let spec = s.spec.as_ref();
    let from_template = spec
        .and_then(|s| s.task_template.as_ref())
        .and_then(|t| t.networks.as_ref());
    #[allow(deprecated)]
    let legacy = spec.and_then(|s| s.networks.as_ref());
    from_template
        .or(legacy)
        .map(|n| n.iter().filter_map(|a| a.target.clone()).collect())
        .unwrap_or_default()
}

fn stream_ended() -> DockerError {
    DockerError::Api {
        call: "events",
        source: bollard::errors::Error::IOError {
            err: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "event stream ended"),
        },
    }
}

/// Publishes a state if it differs from the current one.
fn publish(tx: &watch::Sender<DesiredState>, state: DesiredState, metrics: &Metrics) {
    metrics.docker_resyncs.inc();
    tx.send_if_modified(|cur| {
        if *cur == state {
            return false;
        }
        *cur = state;
        true
    });
}

/// A tiny `StreamExt::next` so the provider needs no futures crate.
mod tokio_stream_lite {
    use std::future::poll_fn;
    use std::pin::Pin;

    use futures_core::Stream;

    pub async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
        poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(typ: EventMessageTypeEnum) -> EventMessage {
        EventMessage {
            typ: Some(typ),
            action: Some("update".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_service_or_node_event_makes_the_poll_fast_for_a_while() {
        let opts = DockerOptions::default();
        let mut s = PollSchedule::new(&opts);
        let t0 = Instant::now();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(s.next_poll(t0), t0 + ms(1000), "normal before any event");
        // Container and network events leave the pace alone.
        s.saw(&event(EventMessageTypeEnum::CONTAINER), t0);
        s.saw(&event(EventMessageTypeEnum::NETWORK), t0);
        assert_eq!(s.next_poll(t0), t0 + ms(1000));

        s.saw(&event(EventMessageTypeEnum::SERVICE), t0);
        let mut at = t0;
        let mut fast = 0;
        loop {
            let next = s.next_poll(at);
            if next - at != ms(100) {
                assert_eq!(next - at, ms(1000));
                break;
            }
            fast += 1;
            at = next;
            assert!(fast < 100, "the fast window never ends");
        }
        assert_eq!(fast, 30, "3 s at 100 ms");
        assert!(at >= t0 + ms(3000));
        // It stays normal once the window is over.
        assert_eq!(s.next_poll(at + ms(50)), at + ms(1050));

        // A later event (a node drain) starts a new window; one within a window extends it.
        let t1 = at + ms(5000);
        s.saw(&event(EventMessageTypeEnum::NODE), t1);
        s.saw(&event(EventMessageTypeEnum::SERVICE), t1 + ms(2000));
        assert_eq!(s.next_poll(t1 + ms(4900)), t1 + ms(5000));
        assert_eq!(s.next_poll(t1 + ms(5000)), t1 + ms(6000));
    }

    #[test]
    fn the_fast_interval_is_never_slower_than_the_normal_one() {
        let opts = DockerOptions {
            poll_interval: Duration::from_millis(50),
            ..DockerOptions::default()
        };
        let mut s = PollSchedule::new(&opts);
        let t0 = Instant::now();
        s.saw(&event(EventMessageTypeEnum::SERVICE), t0);
        assert_eq!(s.next_poll(t0), t0 + Duration::from_millis(50));
    }
}
