//! gRPC through interlock with real gRPC peers (Python grpcio, installed by .ci/run): an
//! h2c client, interlock, an h2c backend (`backend_protocol=h2c`). Unary and streaming
//! calls, an error status and custom trailing metadata: trailers must survive both hops.

use interlock_testkit as common;

use common::{free_port, Proc};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn grpc_calls_keep_trailers_end_to_end() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc");
    let mut server = Proc(
        Command::new("python3")
            .arg(format!("{dir}/server.py"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (grpcio: pip install grpcio)"),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let backend_port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("gRPC server did not start: {line:?}"));

    let config = std::env::temp_dir().join(format!("interlock-grpc-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"grpc\"\nendpoints = [\"127.0.0.1:{backend_port}\"]\n[service.labels]\n\
             \"com.docker.lb.hosts\" = \"grpc.test\"\n\"com.docker.lb.backend_protocol\" = \"h2c\"\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let _proxy = Proc(
        Command::new(env!("CARGO_BIN_EXE_interlock"))
            .args([
                "--config",
                config.to_str().unwrap(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin",
                "off",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "interlock did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("python3")
        .arg(format!("{dir}/client.py"))
        .args([&port.to_string(), "grpc.test"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gRPC client failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("grpc ok"));
}
