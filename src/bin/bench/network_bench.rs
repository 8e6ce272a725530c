//! Over-the-network figures: the shipped server binary under `h2load` (a
//! second process, loopback only), Resolve and Mint alternating with
//! `grpc.health.v1.Health/Check` on the same server as the ceiling of our own
//! stack; and Redis used directly as the token store, `GETEX key EX 1800`
//! from `redis-benchmark` with as many requests in flight.
//!
//! h2load does not read `grpc-status`, so the measured calls are verified
//! apart: the server's log line per RPC must show no failure, and the
//! benchmark's credential must still resolve afterwards.
//!
//! The servers start as shipped, with caller authentication on: each gets
//! its own state directory and the admin key it writes there, which h2load
//! presents as `authorization` metadata. A second server started with
//! `--insecure-no-caller-auth` takes Resolve rounds in turn with the first,
//! for what the per-call key check costs. (h2load takes headers only as
//! arguments; these keys are throwaway ones of servers on loopback, deleted
//! with the work directory.)

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use credential_authority::pb::credential_authority_client::CredentialAuthorityClient;
use credential_authority::pb::{MintRequest, ResolveRequest};
use prost::Message as _;

use crate::report::{percentile, Figure, Report};

/// The shape of the offered load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    /// Requests per round.
    pub(crate) requests: usize,
    /// HTTP/2 connections.
    pub(crate) connections: usize,
    /// Streams per connection.
    pub(crate) streams: usize,
    /// Rounds; the median round is reported.
    pub(crate) rounds: usize,
    /// A fixed request rate per connection (open loop), or as fast as the
    /// server answers (closed loop) when `None`.
    pub(crate) rps_per_connection: Option<usize>,
}

impl Load {
    pub(crate) fn in_flight(&self) -> usize {
        self.connections * self.streams
    }
}

/// The CPU, cores and memory of this machine, for the report.
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{model}, {cores} cores, {mem_gib:.0} GiB")
}

/// A child process stopped when dropped, so a failed run leaves nothing
/// behind: SIGTERM first (the server then drains and writes its last log
/// lines), SIGKILL if it has not exited within a few seconds.
pub(crate) struct Reaped(pub(crate) Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: plain kill(2) on our own child's pid, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One h2load or redis-benchmark round.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Round {
    pub(crate) ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Runs the gRPC and Redis figures.
pub(crate) fn run(server_bin: &Path, load: Load, report: &mut Report) -> anyhow::Result<()> {
    for tool in ["h2load", "redis-server", "redis-benchmark", "redis-cli"] {
        which(tool).with_context(|| {
            format!("`{tool}` is not installed (Debian: apt-get install nghttp2-client redis-server redis-tools)")
        })?;
    }
    let work = std::env::temp_dir().join(format!("ca-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run_in(server_bin, load, report, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The path of Resolve.
pub(crate) const RESOLVE: &str = "/credential_authority.v1.CredentialAuthority/Resolve";

/// The Resolve frame presenting `token`.
pub(crate) fn resolve_frame(token: &str) -> Vec<u8> {
    grpc_frame(
        &ResolveRequest {
            token: token.to_owned(),
            ..ResolveRequest::default()
        }
        .encode_to_vec(),
    )
}

fn run_in(server_bin: &Path, load: Load, report: &mut Report, work: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = start_server(server_bin, work, "server", "info", &[])?;
    let open = start_server(
        server_bin,
        work,
        "open",
        "info",
        &["--insecure-no-caller-auth"],
    )?;
    // The same server on the memory store: what durability costs.
    let memory = start_server(server_bin, work, "memory", "info", &["--store", "memory"])?;
    let token = runtime.block_on(mint_token(&server))?;
    let open_token = runtime.block_on(mint_token(&open))?;
    let memory_token = runtime.block_on(mint_token(&memory))?;
    let mint_frame = grpc_frame(
        &MintRequest {
            thread_id: "bench-mint-0000-4000-8000-000000000000".into(),
            provider_instance_id: "bench-adapter".into(),
            provider_kind: "claude".into(),
            ..MintRequest::default()
        }
        .encode_to_vec(),
    );

    // Resolve sits next to Health/Check and between the calls it is
    // compared with, Mint next to its memory-store twin, and measure_calls
    // reverses the order every other round: the two sides of a ratio run
    // close together, neither always first.
    let calls = [
        Call {
            name: "Health/Check",
            target: &server,
            path: "/grpc.health.v1.Health/Check",
            frame: grpc_frame(&[]),
        },
        Call {
            name: "Resolve",
            target: &server,
            path: RESOLVE,
            frame: resolve_frame(&token),
        },
        Call {
            name: "Resolve, caller authentication off",
            target: &open,
            path: RESOLVE,
            frame: resolve_frame(&open_token),
        },
        Call {
            name: "Resolve, memory store",
            target: &memory,
            path: RESOLVE,
            frame: resolve_frame(&memory_token),
        },
        Call {
            name: "Mint",
            target: &server,
            path: MINT,
            frame: mint_frame.clone(),
        },
        Call {
            name: "Mint, memory store",
            target: &memory,
            path: MINT,
            frame: mint_frame,
        },
    ];
    let scope = format!("gRPC, h2load {}x{}", load.connections, load.streams);
    let rounds = measure_calls(&calls, load, work, &scope, report)?;
    let paired = Paired::of(&calls, &rounds);
    durability_checks(report, &paired, load);
    // Latency at the same offered load: both calls at 70% of what Health
    // sustained, so neither is measured in its own overload queue.
    let health = report
        .find(&scope, "Health/Check", load.in_flight())
        .map_or(0.0, |f| f.ops_per_sec);
    let per_connection = ((0.7 * health) as usize / load.connections.max(1)).max(1);
    let fixed = Load {
        rps_per_connection: Some(per_connection),
        ..load
    };
    let fixed_scope = format!(
        "{scope}, fixed {} req/s offered",
        per_connection * load.connections
    );
    measure_calls(&calls[..2], fixed, work, &fixed_scope, report)?;

    // h2load cannot read grpc-status: prove the calls succeeded apart.
    let still_resolves = runtime.block_on(async {
        let mut client = server.client().await?;
        anyhow::Ok(
            client
                .resolve(ResolveRequest {
                    token: token.clone(),
                    ..ResolveRequest::default()
                })
                .await
                .is_ok(),
        )
    })?;
    let (log_path, open_log_path) = (server.log.clone(), open.log.clone());
    drop((server, open));
    let log = std::fs::read_to_string(&log_path)?;
    let open_log = std::fs::read_to_string(&open_log_path)?;
    let calls = |method: &str, ok: bool| {
        log.lines()
            .filter(|l| l.contains(&format!("method={method} ")))
            .filter(|l| l.contains("outcome=OK") == ok)
            .count()
    };
    // Resolve: the saturated and the fixed-rate rounds and the check above;
    // Mint: its rounds and the benchmark credential's.
    let resolve_sent = 2 * load.requests * load.rounds.max(1) + 1;
    let mint_sent = load.requests * load.rounds.max(1) + 1;
    let (resolved_ok, resolve_failed) = (calls("Resolve", true), calls("Resolve", false));
    let (minted_ok, mint_failed) = (calls("Mint", true), calls("Mint", false));
    let open_failed = open_log
        .lines()
        .filter(|l| l.contains("method=Resolve ") && !l.contains("outcome=OK"))
        .count();
    eprintln!(
        "# verified: Resolve {resolved_ok} OK / {resolve_failed} failed, Mint {minted_ok} OK / {mint_failed} failed (of {resolve_sent} and {mint_sent} sent; a line the log writer had to drop would be missing, not failed)"
    );
    report.check(
        "every measured gRPC call succeeded (server log lines, token resolves after)",
        format!(
            "Resolve {resolved_ok} OK / {resolve_failed} failed of {resolve_sent} sent, Mint {minted_ok} OK / {mint_failed} failed of {mint_sent} sent; token still resolves: {still_resolves}"
        ),
        still_resolves
            && resolve_failed == 0
            && mint_failed == 0
            && open_failed == 0
            && resolved_ok == resolve_sent
            && minted_ok == mint_sent,
    );

    // What the one log line per RPC costs: the same Health/Resolve rounds
    // against a server started with RPC log lines filtered out.
    {
        let quiet = start_server(
            server_bin,
            work,
            "quiet",
            "info,credential_authority::service=warn",
            &[],
        )?;
        let token = runtime.block_on(mint_token(&quiet))?;
        let calls = [
            Call {
                name: "Health/Check",
                target: &quiet,
                path: "/grpc.health.v1.Health/Check",
                frame: grpc_frame(&[]),
            },
            Call {
                name: "Resolve",
                target: &quiet,
                path: RESOLVE,
                frame: resolve_frame(&token),
            },
        ];
        let scope = format!("{scope}, RPC log lines off (diagnostic)");
        measure_calls(&calls, load, work, &scope, report)?;
    }

    let redis = redis_rounds(load, work)?;
    report.figures.push(median_figure(
        &format!("Redis direct, redis-benchmark {} clients", load.in_flight()),
        "GETEX key EX 1800",
        load.in_flight(),
        &redis,
    ));
    network_checks(report, &scope, &fixed_scope, &paired, load);
    Ok(())
}

/// Only the Health/Check and Resolve rows against the default server, in
/// alternating rounds, and the throughput target between them: what a
/// change to the Resolve path is judged by, in a fraction of the full
/// suite's time. Each round pair's own ratio is printed too, since on a
/// shared machine one pair can be off while the medians hold.
pub(crate) fn run_ratio(server_bin: &Path, load: Load, report: &mut Report) -> anyhow::Result<()> {
    which("h2load")
        .context("`h2load` is not installed (Debian: apt-get install nghttp2-client)")?;
    let work = std::env::temp_dir().join(format!("ca-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = ratio_in(server_bin, load, report, &work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn ratio_in(server_bin: &Path, load: Load, report: &mut Report, work: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = start_server(server_bin, work, "server", "info", &[])?;
    let token = runtime.block_on(mint_token(&server))?;
    let calls = [
        Call {
            name: "Health/Check",
            target: &server,
            path: "/grpc.health.v1.Health/Check",
            frame: grpc_frame(&[]),
        },
        Call {
            name: "Resolve",
            target: &server,
            path: RESOLVE,
            frame: resolve_frame(&token),
        },
    ];
    let scope = format!("gRPC, h2load {}x{}", load.connections, load.streams);
    let rounds = measure_calls(&calls, load, work, &scope, report)?;
    for (i, (health, resolve)) in rounds[0].iter().zip(&rounds[1]).enumerate() {
        eprintln!(
            "# round {}: Health/Check {:.0}/s, Resolve {:.0}/s, {:.3}x",
            i + 1,
            health.ops_per_sec,
            resolve.ops_per_sec,
            resolve.ops_per_sec / health.ops_per_sec
        );
    }
    let log = std::fs::read_to_string(&server.log)?;
    let failed = log
        .lines()
        .filter(|l| l.contains("method=Resolve ") && !l.contains("outcome=OK"))
        .count();
    report.check(
        "every measured gRPC call succeeded (server log lines)",
        format!("{failed} Resolve calls failed"),
        failed == 0,
    );
    paired_check(
        report,
        &Paired::of(&calls, &rounds),
        "gRPC Resolve throughput >= 0.95x Health/Check".to_owned(),
        "Resolve",
        "Health/Check",
        0.95,
    );
    Ok(())
}

/// Mints the credential the Resolve load presents.
pub(crate) async fn mint_token(server: &Target) -> anyhow::Result<String> {
    let mut client = server.client().await?;
    let minted = client
        .mint(MintRequest {
            thread_id: "bench-thread-0000-4000-8000-000000000000".into(),
            provider_instance_id: "bench-adapter".into(),
            provider_kind: "claude".into(),
            ..MintRequest::default()
        })
        .await?
        .into_inner();
    Ok(minted.token)
}

/// One measured call: a request frame sent to a path of a server.
pub(crate) struct Call<'a> {
    pub(crate) name: &'a str,
    pub(crate) target: &'a Target,
    pub(crate) path: &'a str,
    pub(crate) frame: Vec<u8>,
}

/// Runs h2load rounds over `calls`, alternating (every other round in
/// reverse order) so that drift hits them alike; the median round of each
/// becomes a figure in `scope`. Returns every round, per call.
pub(crate) fn measure_calls(
    calls: &[Call<'_>],
    load: Load,
    work: &Path,
    scope: &str,
    report: &mut Report,
) -> anyhow::Result<Vec<Vec<Round>>> {
    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); calls.len()];
    for round in 0..load.rounds.max(1) {
        let mut order: Vec<usize> = (0..calls.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let call = &calls[i];
            settle(calls.iter().map(|c| c.target));
            let frame_path = work.join(format!("frame-{i}.bin"));
            std::fs::write(&frame_path, &call.frame)?;
            eprintln!("# {scope}: {}, round {}", call.name, round + 1);
            rounds[i].push(h2load(call.target, call.path, &frame_path, load, work)?);
        }
    }
    for (i, call) in calls.iter().enumerate() {
        report.figures.push(median_figure(
            scope,
            call.name,
            load.in_flight(),
            &rounds[i],
        ));
    }
    Ok(rounds)
}

/// Waits (at most 15 s) until the servers under measurement are idle: no
/// more than 10% of a core between them in each of five quarter-seconds in
/// a row, longer than the 1 s between checkpoints that start a compaction.
/// A Mint round leaves work behind on the durable server (a compaction
/// starts at the next checkpoint once the journal has grown past 64 MiB,
/// and takes a core for a second or two); without this wait it ran during
/// whichever round came next, on any server, since they share the two
/// cores.
fn settle<'a>(targets: impl Iterator<Item = &'a Target>) {
    let mut pids: Vec<u32> = targets.map(|t| t.process.0.id()).collect();
    pids.sort_unstable();
    pids.dedup();
    let ticks = || -> u64 {
        pids.iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .filter_map(|stat| {
                // utime and stime: fields 14 and 15, counted after the
                // command name's closing parenthesis.
                let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
            })
            .sum()
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut quiet = 0;
    while Instant::now() < deadline {
        let before = ticks();
        std::thread::sleep(Duration::from_millis(250));
        if ticks().saturating_sub(before) * 40 <= per_second {
            quiet += 1;
            if quiet == 5 {
                return;
            }
        } else {
            quiet = 0;
        }
    }
    eprintln!("# the servers were still busy after 15 s; measuring anyway");
}

/// The path of Mint.
const MINT: &str = "/credential_authority.v1.CredentialAuthority/Mint";

/// The rounds of one measurement by call name, for ratios of paired
/// rounds: round `r` of one call against round `r` of another, run back to
/// back, whose median moves far less between runs than a ratio of two
/// medians taken minutes apart.
pub(crate) struct Paired {
    rounds: Vec<(String, Vec<Round>)>,
}

impl Paired {
    /// The rounds `measure_calls` returned for `calls`.
    pub(crate) fn of(calls: &[Call<'_>], rounds: &[Vec<Round>]) -> Paired {
        Paired {
            rounds: calls
                .iter()
                .zip(rounds)
                .map(|(call, rounds)| (call.name.to_owned(), rounds.clone()))
                .collect(),
        }
    }

    /// The median over rounds of `a`'s throughput over `b`'s, and the
    /// words the report prints for it (each round's ratio, each call's
    /// median); `None` if either was not measured.
    pub(crate) fn ratio(&self, a: &str, b: &str) -> Option<(f64, String)> {
        let find = |name: &str| {
            self.rounds
                .iter()
                .find(|(n, _)| *n == name)
                .map(|r| r.1.as_slice())
        };
        let (a, b) = (find(a)?, find(b)?);
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let ratios: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(a, b)| a.ops_per_sec / b.ops_per_sec)
            .collect();
        let each = ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        let ratio = median(ratios)?;
        let of = |rounds: &[Round]| median(rounds.iter().map(|r| r.ops_per_sec).collect());
        let words = format!(
            "{ratio:.2}x, median of paired rounds ({each}); medians {:.0}/s vs {:.0}/s",
            of(a)?,
            of(b)?
        );
        Some((ratio, words))
    }
}

/// Checks that `a` is at least `floor` times `b`, by the median of their
/// paired rounds.
fn paired_check(
    report: &mut Report,
    paired: &Paired,
    target: String,
    a: &str,
    b: &str,
    floor: f64,
) {
    if let Some((ratio, measured)) = paired.ratio(a, b) {
        report.check(target, measured, ratio >= floor);
    }
}

/// What the durable store costs over gRPC: the default server against the
/// same binary on `--store memory`, in paired rounds.
fn durability_checks(report: &mut Report, paired: &Paired, load: Load) {
    let n = load.in_flight();
    for (durable, memory, floor) in [
        ("Resolve", "Resolve, memory store", 0.95),
        ("Mint", "Mint, memory store", 0.5),
    ] {
        paired_check(
            report,
            paired,
            format!(
                "gRPC {durable} on the durable store >= {floor}x the memory store, {n} in flight"
            ),
            durable,
            memory,
            floor,
        );
    }
}

/// Targets comparing the network figures of this run.
fn network_checks(
    report: &mut Report,
    scope: &str,
    fixed_scope: &str,
    paired: &Paired,
    load: Load,
) {
    let redis_scope = format!("Redis direct, redis-benchmark {} clients", load.in_flight());
    let (Some(resolve), Some(health), Some(redis)) = (
        report.find(scope, "Resolve", load.in_flight()).cloned(),
        report
            .find(scope, "Health/Check", load.in_flight())
            .cloned(),
        report
            .find(&redis_scope, "GETEX key EX 1800", load.in_flight())
            .cloned(),
    ) else {
        return;
    };
    let p99 = |f: &Figure| f.p99_us.unwrap_or(f64::INFINITY);
    let (fixed_resolve, fixed_health) = (
        report
            .find(fixed_scope, "Resolve", load.in_flight())
            .cloned(),
        report
            .find(fixed_scope, "Health/Check", load.in_flight())
            .cloned(),
    );
    if let (Some(resolve), Some(health)) = (fixed_resolve, fixed_health) {
        report.check(
            "gRPC Resolve p99 <= 1.2x Health/Check p99 at the same offered load",
            format!(
                "{:.2}x ({:.0} µs vs {:.0} µs at {fixed_scope})",
                p99(&resolve) / p99(&health),
                p99(&resolve),
                p99(&health)
            ),
            p99(&resolve) <= 1.2 * p99(&health),
        );
    }
    paired_check(
        report,
        paired,
        "gRPC Resolve with caller authentication >= 0.95x Resolve without".to_owned(),
        "Resolve",
        "Resolve, caller authentication off",
        0.95,
    );
    paired_check(
        report,
        paired,
        "gRPC Resolve throughput >= 0.95x Health/Check".to_owned(),
        "Resolve",
        "Health/Check",
        0.95,
    );
    report.check(
        "gRPC Resolve p99 <= 1.2x Health/Check p99, both saturated (closed loop)",
        format!(
            "{:.2}x ({:.0} µs vs {:.0} µs)",
            p99(&resolve) / p99(&health),
            p99(&resolve),
            p99(&health)
        ),
        p99(&resolve) <= 1.2 * p99(&health),
    );
    report.check(
        "gRPC Resolve throughput >= 2x Redis GETEX at the same concurrency",
        format!(
            "{:.2}x ({:.0}/s vs {:.0}/s)",
            resolve.ops_per_sec / redis.ops_per_sec,
            resolve.ops_per_sec,
            redis.ops_per_sec
        ),
        resolve.ops_per_sec >= 2.0 * redis.ops_per_sec,
    );
    report.check(
        "gRPC Resolve p99 no worse than Redis GETEX p99",
        format!("{:.0} µs vs {:.0} µs", p99(&resolve), p99(&redis)),
        p99(&resolve) <= p99(&redis),
    );
}

/// The round with the median throughput, as a figure.
pub(crate) fn median_figure(scope: &str, what: &str, in_flight: usize, rounds: &[Round]) -> Figure {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    let chosen = sorted[sorted.len() / 2];
    Figure {
        scope: scope.to_owned(),
        what: what.to_owned(),
        parallelism: in_flight,
        ops_per_sec: chosen.ops_per_sec,
        p50_us: Some(chosen.p50_us),
        p99_us: Some(chosen.p99_us),
    }
}

/// A server under load: its process, address, log and the caller key the
/// load presents (none when it runs without caller authentication).
pub(crate) struct Target {
    process: Reaped,
    addr: SocketAddr,
    log: PathBuf,
    key: Option<String>,
}

impl Target {
    /// A client presenting the server's key.
    async fn client(
        &self,
    ) -> anyhow::Result<
        CredentialAuthorityClient<
            tonic::service::interceptor::InterceptedService<
                tonic::transport::Channel,
                impl tonic::service::Interceptor,
            >,
        >,
    > {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))?
            .connect()
            .await?;
        let header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> = self
            .key
            .as_ref()
            .map(|key| format!("Bearer {key}").parse())
            .transpose()?;
        Ok(CredentialAuthorityClient::with_interceptor(
            channel,
            move |mut request: tonic::Request<()>| {
                if let Some(header) = &header {
                    request
                        .metadata_mut()
                        .insert("authorization", header.clone());
                }
                Ok(request)
            },
        ))
    }
}

/// Starts the release server on an ephemeral loopback port with its own
/// state directory under `work`, logging (as shipped, one line per RPC) to
/// `work/NAME.log`.
pub(crate) fn start_server(
    bin: &Path,
    work: &Path,
    name: &str,
    log_filter: &str,
    flags: &[&str],
) -> anyhow::Result<Target> {
    let log_path = work.join(format!("{name}.log"));
    let state_dir = work.join(format!("{name}-state"));
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--shutdown-grace", "2s"])
        // h2load sends one Mint frame over and over, so every Mint is on
        // one thread: the per-thread limit is raised (the bench measures
        // the server's speed, not its limits).
        .args(["--max-credentials-per-thread", "1000000000"])
        .arg("--state-dir")
        .arg(&state_dir)
        .args(flags)
        .env("RUST_LOG", log_filter)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build it: cargo build --release --bins)",
                bin.display()
            )
        })?;
    let mut child = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(addr) = text
            .lines()
            .filter(|l| l.contains("listening"))
            .find_map(|l| l.split("addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
        {
            let key = std::fs::read_to_string(state_dir.join("admin.key"))
                .ok()
                .map(|key| key.trim().to_owned());
            if key.is_some() {
                lift_quotas(&state_dir, &log_path, child.0.id())?;
            }
            return Ok(Target {
                process: child,
                addr,
                log: log_path,
                key,
            });
        }
        if let Some(status) = child.0.try_wait()? {
            bail!("server exited with {status}:\n{text}");
        }
        if Instant::now() > deadline {
            bail!("server did not report its address:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raises every caller's quotas in the server's callers file and has it
/// reload (SIGHUP): the default Mint rate (1,000/s) is far below what the
/// Mint rows send, and they measure the server, not its quotas.
fn lift_quotas(state_dir: &Path, log_path: &Path, pid: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(state_dir.join("callers.toml"))?;
    writeln!(
        file,
        "\n[defaults]\nmax_live_credentials = 1000000000\n\
         mint_rate = {{ per_second = 4294967295, burst = 4294967295 }}"
    )?;
    drop(file);
    // SAFETY: signals our own child, which is alive (its log is being read).
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log_path).unwrap_or_default();
        if text.contains("callers reloaded") {
            return Ok(());
        }
        if text.contains("callers file refused") || Instant::now() > deadline {
            bail!("the server did not take the raised quotas:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A gRPC length-prefixed message frame (uncompressed).
pub(crate) fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// One h2load round against `path`; latencies from its per-request log.
fn h2load(
    target: &Target,
    path: &str,
    frame: &Path,
    load: Load,
    work: &Path,
) -> anyhow::Result<Round> {
    let log = work.join("h2load-requests.tsv");
    let output = Command::new("h2load")
        .args([
            "-n",
            &load.requests.to_string(),
            "-c",
            &load.connections.to_string(),
            "-m",
            &load.streams.to_string(),
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            "-d",
        ])
        .arg(frame)
        .args(load.rps_per_connection.map(|rps| format!("--rps={rps}")))
        .args(
            target
                .key
                .as_ref()
                .map(|key| format!("--header=authorization: Bearer {key}")),
        )
        .arg("--log-file")
        .arg(&log)
        .arg(format!("http://{}{path}", target.addr))
        .stdin(Stdio::null())
        .output()
        .context("run h2load")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let ops_per_sec = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("h2load printed no throughput:\n{text}"))?;
    let succeeded = text
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|l| l.split(", ").find(|p| p.ends_with("succeeded")))
        .and_then(|p| p.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    if succeeded != load.requests {
        bail!(
            "h2load: only {succeeded} of {} requests got an HTTP 200:\n{text}",
            load.requests
        );
    }
    let mut latencies: Vec<f64> = std::fs::read_to_string(&log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .collect();
    Ok(Round {
        ops_per_sec,
        p50_us: percentile(&mut latencies, 50.0),
        p99_us: percentile(&mut latencies, 99.0),
    })
}

/// Rounds of `GETEX key EX 1800` against a fresh loopback redis-server.
fn redis_rounds(load: Load, work: &Path) -> anyhow::Result<Vec<Round>> {
    let port = StdListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port()
        .to_string();
    let _redis = Reaped(
        Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server")?,
    );
    // What a user would keep: the token's digest -> the credential's facts.
    let key = "cred:6b2c1f0a4e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b";
    let value = r#"{"credential_id":"cred_0123456789abcdef0123456789abcdef","thread_id":"bench-thread-0000-4000-8000-000000000000","provider_instance_id":"bench-adapter","provider_kind":"claude"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_cli(&port, &["SET", key, value, "EX", "1800"])? != "OK" {
        if Instant::now() > deadline {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rounds = Vec::new();
    for round in 0..load.rounds.max(1) {
        eprintln!("# Redis GETEX, round {}", round + 1);
        let output = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(["-c", &load.in_flight().to_string()])
            .args(["-n", &load.requests.to_string()])
            .args(["--csv", "GETEX", key, "EX", "1800"])
            .stdin(Stdio::null())
            .output()
            .context("run redis-benchmark")?;
        let text = String::from_utf8_lossy(&output.stdout);
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        let fields: Vec<f64> = text
            .lines()
            .last()
            .unwrap_or_default()
            .split(',')
            .skip(1)
            .filter_map(|f| f.trim_matches('"').parse().ok())
            .collect();
        if !output.status.success() || fields.len() < 6 {
            bail!(
                "redis-benchmark failed: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        rounds.push(Round {
            ops_per_sec: fields[0],
            p50_us: fields[3] * 1e3,
            p99_us: fields[5] * 1e3,
        });
    }
    // The measured GETEXs found the key (a miss would be just as fast).
    if redis_cli(&port, &["GETEX", key, "EX", "1800"])? != value {
        bail!("redis lost the key during the benchmark");
    }
    Ok(rounds)
}

pub(crate) fn redis_cli(port: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", port])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run redis-cli")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The path of `tool` on `PATH`.
fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
}
