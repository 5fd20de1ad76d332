//! A Docker daemon killed (SIGKILL) and started again under a running controller and proxy.
//!
//! The daemon is one this test starts itself: a one-node bed of testkit/src/multinode.rs
//! (tests/multinode/bed.sh), a private dockerd with its own data root, exec root, pid file,
//! socket, containerd namespace and cgroup parent, in a network namespace of its own, all
//! removed on drop (also on panic). The machine's own Docker Engine is never used: DOCKER_HOST
//! points at the bed's socket for the whole test binary, and the bed's storage driver is given
//! (vfs unless INTERLOCK_MULTINODE_STORAGE_DRIVER says otherwise), so bed.sh never asks the
//! machine's engine for one.
//!
//! The bed initialises a swarm; the node leaves it again, and the controller reads it in
//! containers mode. The bed's daemon has no default bridge: the backends are containers on a
//! user-defined bridge network of that daemon, whose addresses exist only in the node's
//! network namespace, so the proxy runs there (`nsenter --net`), listening on the node's
//! address; the controller runs on the host, its API on the host's address on the bed's /24
//! (the proxy reaches it through the bed's switch), its Docker access the bed's unix socket.
//! The test process sends its load to the node's address. All traffic stays on 127.0.0.1 and
//! in the bed's namespaces.
//!
//! INTERLOCK_SKIP_DOCKER=1 or INTERLOCK_SKIP_MULTINODE=1 mark the test ignored (build.rs); a
//! machine that cannot host the bed (root, ip, nsenter, unshare, dockerd) fails it.

use interlock_testkit as common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::engine::{backend_image, run_backend_container};
use common::free_port;
use common::multinode::{missing_tools, probe, Bed, BedNode, Load};
use common::node::{eventually, Node, Scratch};

const BACKEND_IMAGE: &str = "interlock-test/backend:restart";
/// The daemon's user-defined bridge network the backends are on.
const NETWORK: &str = "backends";
/// The proxy's listeners on the node's address.
const PROXY_PORT: u16 = 8080;
const PROXY_ADMIN_PORT: u16 = 9090;

/// An `interlock` process in the node's network namespace (`nsenter --net`), killed on drop.
async fn start_in_netns(node: &BedNode, name: &str, args: &[String], admin: SocketAddr) -> Node {
    let mut cmd = node.command_in_netns(common::node::bin());
    cmd.args(args);
    Node::spawn_command(name, cmd, admin).ready().await
}

/// Starts backend container `name` on the bed's network, answering as `name` for `host`;
/// restarted by its daemon (`--restart always`), stopped within 1 s when the daemon stops it
/// (the example backend ignores SIGTERM as pid 1), which is what a restarted dockerd without
/// live-restore does to the containers it finds running.
fn run_backend(name: &str, host: &str) {
    run_backend_container(
        name,
        BACKEND_IMAGE,
        name,
        host,
        &[
            "--restart",
            "always",
            "--stop-timeout",
            "1",
            "--network",
            NETWORK,
        ],
    );
}

fn answers(proxy: SocketAddr, host: &str, backend: &str) -> bool {
    matches!(probe(proxy, host), Ok((200, Some(b))) if b == backend)
}

#[test]
#[cfg_attr(skip_docker, ignore = "INTERLOCK_SKIP_DOCKER=1")]
#[cfg_attr(skip_multinode, ignore = "INTERLOCK_SKIP_MULTINODE=1")]
fn a_killed_and_restarted_docker_daemon_costs_no_request() {
    let missing = missing_tools();
    assert!(
        missing.is_empty(),
        "this test starts a dockerd of its own and needs {missing:?}"
    );
    let t0 = Instant::now();
    // Set before any other thread of this test binary runs. bed.sh picks the storage driver
    // from this variable when it starts the daemon and again when it restarts it.
    if std::env::var_os("INTERLOCK_MULTINODE_STORAGE_DRIVER").is_none() {
        std::env::set_var("INTERLOCK_MULTINODE_STORAGE_DRIVER", "vfs");
    }
    let bed = Bed::up(1, 0);
    let node = bed.manager().clone();
    // Every `docker` this process runs, and the controller, talk to the bed's daemon.
    std::env::set_var("DOCKER_HOST", &node.host);
    node.docker(&["swarm", "leave", "--force"]);
    node.docker(&["network", "create", "-d", "bridge", NETWORK]);
    backend_image(BACKEND_IMAGE);
    eprintln!(
        "bed {} ({}) up in {:.1} s, backend image on it at {:.1} s",
        node.hostname,
        node.addr,
        bed.started_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(scenario(&bed, &node));
    eprintln!("done in {:.1} s", t0.elapsed().as_secs_f64());
    // The bed (daemon, containers, namespaces, folders) goes here.
}

async fn scenario(bed: &Bed, node: &BedNode) {
    run_backend("one", "one.test");

    // The host's address on the bed's /24: the proxy in the node's namespace reaches it.
    let host_addr: Ipv4Addr = format!("{}.1", bed.net).parse().unwrap();
    let certs = Scratch::new("dockerd");
    certs.issue_certs(&[&host_addr.to_string()], &[""]);
    let file = |n: &str| certs.path(n);
    let api = SocketAddr::from((host_addr, free_port()));
    let ctl = Node::start(
        "controller",
        &[
            "controller",
            "--docker",
            "--docker-mode",
            "containers",
            "--docker-poll-ms",
            "250",
            "--api-listen",
            &api.to_string(),
            "--control-ca",
            &file("ca.pem"),
            "--control-cert",
            &file("controller.pem"),
            "--control-key",
            &file("controller.key"),
        ]
        .map(String::from),
    )
    .await;
    let listen = SocketAddr::from((node.addr, PROXY_PORT));
    let _proxy = start_in_netns(
        node,
        "proxy",
        &[
            "proxy",
            "--controller",
            &format!("https://{api}"),
            "--poll-wait",
            "5",
            "--control-ca",
            &file("ca.pem"),
            "--control-cert",
            &file("proxy.pem"),
            "--control-key",
            &file("proxy.key"),
            "--listen",
            &listen.to_string(),
        ]
        .map(String::from),
        SocketAddr::from((node.addr, PROXY_ADMIN_PORT)),
    )
    .await;
    let took = eventually(Duration::from_secs(30), || async {
        answers(listen, "one.test", "one")
    })
    .await
    .expect("one.test routed through controller and proxy");
    eprintln!("one.test routed {took:?} after the proxy started");
    assert_eq!(ctl.metric("interlock_docker_up", &[]).await, Some(1.0));

    // Continuous keep-alive traffic while the daemon is dead.
    let load = Load::start(
        listen,
        "one.test",
        2,
        1_000_000,
        Duration::from_secs(30),
        Duration::from_millis(2),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    bed.kill_daemon(node);
    assert!(
        node.try_docker(&["info"]).is_err(),
        "the bed's dockerd still answers after SIGKILL"
    );
    let seen = eventually(Duration::from_secs(15), || async {
        ctl.metric("interlock_docker_up", &[]).await == Some(0.0)
    })
    .await
    .expect("the controller reports the engine gone");
    eprintln!("interlock_docker_up 0 {seen:?} after the daemon was gone");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = tokio::task::spawn_blocking(move || load.finish())
        .await
        .unwrap();
    eprintln!(
        "while dockerd was dead ({:?}): {} requests, {} failed, backends {:?}, {} idle \
         connections closed and retried",
        t0.elapsed(),
        report.requests,
        report.failures,
        report.backends,
        report.retried_idle_closes
    );
    assert!(report.requests > 0, "the load sent nothing");
    assert_eq!(
        report.failures, 0,
        "the last good routes must keep serving: {:?}",
        report.samples
    );
    assert_eq!(
        report.backends.keys().collect::<Vec<_>>(),
        ["one"],
        "only one.test's backend answers"
    );

    // Back: the controller reconnects and resyncs; a container started after the restart is
    // routed, and the old one again once the daemon has restarted it (it may get a new
    // address).
    bed.start_daemon(node);
    eprintln!("dockerd back after {:?}", t0.elapsed());
    let back = eventually(Duration::from_secs(30), || async {
        ctl.metric("interlock_docker_up", &[]).await == Some(1.0)
    })
    .await
    .expect("the controller reconnects");
    eprintln!("interlock_docker_up 1 {back:?} after the daemon answered again");
    run_backend("two", "two.test");
    let took = eventually(Duration::from_secs(30), || async {
        answers(listen, "two.test", "two")
    })
    .await
    .expect("a container started after the restart is routed");
    eprintln!("two.test routed {took:?} after it started");
    eventually(Duration::from_secs(60), || async {
        answers(listen, "one.test", "one")
    })
    .await
    .expect("the restarted container is routed again");
}
