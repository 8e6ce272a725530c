//! The Redis backend's figures: gRPC Resolve on `--store redis` against the
//! same harness whose Resolve function only reads the key, the Resolve
//! function's own cost in Redis beside GETEX's, and RevokeAll's time at 1K
//! and 1M live credentials. Every Redis here is a fresh loopback
//! `redis-server` of its own.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use credential_authority::clock::{Clock, SystemClock};
use credential_authority::store::redis::{RedisOptions, RedisStore};
use credential_authority::store::{Backend, NewCredential, Reach, RevokeAllTarget, StoreConfig};
use credential_authority::token::Token;

use crate::network_bench::{
    measure_calls, mint_token, redis_cli, resolve_frame, start_server, Call, Load, Reaped, RESOLVE,
};
use crate::report::{Figure, Report};

/// The shipped function library.
const LIBRARY: &str = include_str!("../../store/redis/library.lua");

/// The harness's Resolve: reads the credential and answers it, with no
/// check, no renewal and no TTL; the same reply shape, parsed by the same
/// client. The rest of the library is the shipped one.
const GET_ONLY_RESOLVE: &str = "
local function get_only(keys, args)
  local r = read(keys[1])
  if not r then return {'U'} end
  return {'L', r.id, r.th, r['in'], r.kd, r.ow, r.cr, r.cr + r.ml, r.cr + r.it, r.sc, r.lb}
end
redis.register_function{function_name = 'ca1_resolve', callback = get_only, flags = {'allow-oom'}}";

/// A loopback redis-server as the authority requires it (noeviction),
/// without persistence: the figures are of the backend, not of the disk.
struct Redis {
    _process: Reaped,
    port: String,
}

impl Redis {
    fn start(work: &Path, name: &str) -> anyhow::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
            .to_string();
        let dir = work.join(name);
        std::fs::create_dir_all(&dir)?;
        let process = Reaped(
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port, "--save", ""])
                .args(["--appendonly", "no", "--maxmemory-policy", "noeviction"])
                .arg("--dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start redis-server")?,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_cli(&port, &["PING"]).unwrap_or_default() != "PONG" {
            if Instant::now() > deadline {
                bail!("redis-server did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Redis {
            _process: process,
            port,
        })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `usec_per_call` of `command` in `INFO commandstats`.
    fn usec_per_call(&self, command: &str) -> anyhow::Result<f64> {
        let stats = redis_cli(&self.port, &["INFO", "commandstats"])?;
        let needle = format!("cmdstat_{command}:");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|l| l.split(',').find_map(|p| p.strip_prefix("usec_per_call=")))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no {command} in commandstats:\n{stats}"))
    }
}

/// Runs the Redis figures; `live` is the larger RevokeAll size.
pub(crate) fn run(
    server_bin: &Path,
    load: Load,
    work: &Path,
    live: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (real, harness) = (
        Redis::start(work, "redis-real")?,
        Redis::start(work, "redis-get")?,
    );
    let flags = |redis: &Redis| {
        vec![
            "--store".to_owned(),
            "redis".into(),
            "--redis-url".into(),
            redis.url(),
        ]
    };
    let real_flags = flags(&real);
    let harness_flags = flags(&harness);
    fn as_str(flags: &[String]) -> Vec<&str> {
        flags.iter().map(String::as_str).collect()
    }
    let on_real = start_server(
        server_bin,
        work,
        "redis-store",
        "info",
        &as_str(&real_flags),
    )?;
    let on_harness = start_server(
        server_bin,
        work,
        "redis-harness",
        "info",
        &as_str(&harness_flags),
    )?;
    let real_token = runtime.block_on(mint_token(&on_real))?;
    let harness_token = runtime.block_on(mint_token(&on_harness))?;
    // The harness's server loaded the shipped library at start; its Resolve
    // is now replaced (nothing reloads it while the function exists).
    let get_only = LIBRARY.replace(
        "redis.register_function{function_name = 'ca1_resolve', callback = resolve, flags = {'allow-oom'}}",
        GET_ONLY_RESOLVE,
    );
    if get_only == LIBRARY {
        bail!("the GET-only harness found no ca1_resolve registration to replace");
    }
    redis_cli(&harness.port, &["FUNCTION", "LOAD", "REPLACE", &get_only])?;

    redis_cli(&real.port, &["CONFIG", "RESETSTAT"])?;
    let calls = [
        Call {
            name: "Resolve, Redis store",
            target: &on_real,
            path: RESOLVE,
            frame: resolve_frame(&real_token),
        },
        Call {
            name: "Resolve, Redis harness: the function only reads the key",
            target: &on_harness,
            path: RESOLVE,
            frame: resolve_frame(&harness_token),
        },
    ];
    let scope = format!("gRPC, h2load {}x{}, Redis", load.connections, load.streams);
    measure_calls(&calls, load, work, &scope, report)?;
    let resolve_usec = real.usec_per_call("fcall")?;

    // GETEX on the same server, as redis-benchmark sends it.
    redis_cli(&real.port, &["SET", "bench:getex", "x", "EX", "1800"])?;
    redis_cli(&real.port, &["CONFIG", "RESETSTAT"])?;
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &real.port])
        .args(["-c", &load.in_flight().to_string()])
        .args(["-n", &load.requests.to_string()])
        .args(["-q", "GETEX", "bench:getex", "EX", "1800"])
        .stdin(Stdio::null())
        .output()
        .context("run redis-benchmark")?;
    if !output.status.success() {
        bail!("redis-benchmark failed");
    }
    let getex_usec = real.usec_per_call("getex")?;
    // The floor of any function: an FCALL that does nothing, the same way.
    redis_cli(
        &real.port,
        &[
            "FUNCTION",
            "LOAD",
            "REPLACE",
            "#!lua name=bench_floor\nredis.register_function('bench_nothing', function() return 0 end)",
        ],
    )?;
    redis_cli(&real.port, &["CONFIG", "RESETSTAT"])?;
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &real.port])
        .args(["-c", &load.in_flight().to_string()])
        .args(["-n", &load.requests.to_string()])
        .args(["-q", "FCALL", "bench_nothing", "0"])
        .stdin(Stdio::null())
        .output()
        .context("run redis-benchmark")?;
    if !output.status.success() {
        bail!("redis-benchmark failed");
    }
    let floor_usec = real.usec_per_call("fcall")?;
    report.figures.push(Figure {
        scope: "Redis server-side, INFO commandstats".into(),
        what: "an FCALL of a function that does nothing (the floor), usec_per_call".into(),
        parallelism: load.in_flight(),
        ops_per_sec: 1e6 / floor_usec,
        p50_us: Some(floor_usec),
        p99_us: None,
    });
    report.figures.push(Figure {
        scope: "Redis server-side, INFO commandstats".into(),
        what: "Resolve function (FCALL ca1_resolve), usec_per_call".into(),
        parallelism: load.in_flight(),
        ops_per_sec: 1e6 / resolve_usec,
        p50_us: Some(resolve_usec),
        p99_us: None,
    });
    report.figures.push(Figure {
        scope: "Redis server-side, INFO commandstats".into(),
        what: "GETEX key EX 1800, usec_per_call".into(),
        parallelism: load.in_flight(),
        ops_per_sec: 1e6 / getex_usec,
        p50_us: Some(getex_usec),
        p99_us: None,
    });
    drop((on_real, on_harness));

    let revoke_all = runtime.block_on(revoke_all_at(&Redis::start(work, "redis-revoke")?, live))?;
    for (size, seconds) in &revoke_all {
        report.figures.push(Figure {
            scope: format!("Redis store, {size} live"),
            what: "RevokeAll (everything), in-process".into(),
            parallelism: 1,
            ops_per_sec: 1.0 / seconds,
            p50_us: Some(seconds * 1e6),
            p99_us: None,
        });
    }
    checks(report, &scope, load, resolve_usec, getex_usec, &revoke_all);
    Ok(())
}

/// RevokeAll's mean time at 1K live credentials, then at `live`.
async fn revoke_all_at(redis: &Redis, live: usize) -> anyhow::Result<Vec<(usize, f64)>> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let config = StoreConfig {
        max_credentials_per_thread: u64::MAX,
        ..StoreConfig::default()
    };
    let options = RedisOptions {
        url: redis.url(),
        password: None,
        min_replicas: 0,
        timeout: Duration::from_secs(30),
        tls_ca: None,
    };
    let backend = Backend::from(RedisStore::connect(options, config, clock, None).await?);
    let mut held = 0;
    let mut times = Vec::new();
    for size in [1_000.min(live), live] {
        eprintln!("# Redis store: filling to {size} live credentials");
        while held < size {
            let batch = (size - held).min(512);
            let mints = (0..batch).map(|i| {
                let backend = backend.clone();
                let thread = format!("bench-thread-{}", (held + i) % 100_000);
                async move {
                    backend
                        .mint(
                            Token::generate().digest(),
                            NewCredential {
                                thread_id: &thread,
                                provider_instance_id: "bench-adapter",
                                minted_by: "bench",
                                reach: Reach::MintedBy("bench"),
                                ..NewCredential::default()
                            },
                        )
                        .await
                }
            });
            for minted in futures_join(mints).await {
                minted.map_err(|e| anyhow::anyhow!("mint: {e}"))?;
            }
            held += batch;
        }
        const REPEATS: u32 = 20;
        let started = Instant::now();
        for _ in 0..REPEATS {
            backend
                .revoke_all(RevokeAllTarget::Everything)
                .await
                .map_err(|e| anyhow::anyhow!("revoke_all: {e}"))?;
        }
        times.push((size, started.elapsed().as_secs_f64() / f64::from(REPEATS)));
        // The next size is counted afresh: a RevokeAll ended these.
        held = 0;
    }
    Ok(times)
}

/// Awaits every future of `futures`, concurrently, in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("mint task"));
    }
    out
}

/// The Redis targets.
fn checks(
    report: &mut Report,
    scope: &str,
    load: Load,
    resolve_usec: f64,
    getex_usec: f64,
    revoke_all: &[(usize, f64)],
) {
    let ops = |what: &str| {
        report
            .find(scope, what, load.in_flight())
            .map(|f| f.ops_per_sec)
    };
    let (real, harness) = (
        ops("Resolve, Redis store"),
        ops("Resolve, Redis harness: the function only reads the key"),
    );
    if let (Some(real), Some(harness)) = (real, harness) {
        report.check(
            "gRPC Resolve on the Redis store >= 0.8x the harness whose function only reads the key",
            format!("{:.2}x ({real:.0}/s vs {harness:.0}/s)", real / harness),
            real >= 0.8 * harness,
        );
    }
    report.check(
        "Redis-side: the Resolve function's usec_per_call <= 3x GETEX's",
        format!(
            "{:.2}x ({resolve_usec:.2} µs vs {getex_usec:.2} µs)",
            resolve_usec / getex_usec
        ),
        resolve_usec <= 3.0 * getex_usec,
    );
    if let [(small, small_s), (large, large_s)] = revoke_all {
        report.check(
            format!("RevokeAll on the Redis store: {large} live costs what {small} live does"),
            format!(
                "{:.2}x ({:.0} µs vs {:.0} µs)",
                large_s / small_s,
                large_s * 1e6,
                small_s * 1e6
            ),
            large_s / small_s <= 2.0,
        );
    }
}
