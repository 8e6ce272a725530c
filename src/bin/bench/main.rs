//! The benchmark suite: one command measures the store in-process, the
//! shipped server over gRPC under `h2load`, and Redis used directly under
//! `redis-benchmark`, prints one table and writes the figures as JSON.
//!
//! Every comparison the targets name is measured in the same run, so the
//! ratios hold under the same machine noise. `--smoke` runs tiny sizes in
//! seconds (CI runs it so the suite keeps working; it never fails on a
//! timing).

mod durable_bench;
mod network_bench;
mod redis_bench;
mod report;
mod store_bench;

use std::path::PathBuf;

use clap::Parser;

use crate::report::Report;
use crate::store_bench::StorePlan;

/// The allocator the server binary ships with, so the store is measured as
/// it runs there.
#[global_allocator]
static GLOBAL: credential_authority::allocator::Allocator =
    credential_authority::allocator::Allocator;

/// Benchmarks of the credential authority.
#[derive(Debug, Parser)]
struct Args {
    /// Tiny sizes and short rounds: checks that the suite runs.
    #[arg(long)]
    smoke: bool,
    /// Live-credential counts for the store figures.
    #[arg(long, value_delimiter = ',', default_value = "1000,1000000,10000000")]
    sizes: Vec<usize>,
    /// Calls per store Resolve/Touch measurement.
    #[arg(long, default_value_t = 2_000_000)]
    ops: usize,
    /// Credentials minted per store Mint measurement.
    #[arg(long, default_value_t = 200_000)]
    batch: usize,
    /// Rounds per measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Rounds of the measurements whose ratios are targets (gRPC, Redis,
    /// durable against memory): more than `--rounds`, since each ratio is
    /// the median of paired rounds and one round on a shared machine can
    /// be off by 20%.
    #[arg(long, default_value_t = 5)]
    ratio_rounds: usize,
    /// Credentials expiring at once in the sweeper measurement (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    expiring: usize,
    /// Credentials of one thread expiring together in the thread-shape
    /// measurement (0 skips it).
    #[arg(long, default_value_t = 50_000)]
    thread_expiring: usize,
    /// Requests per h2load and redis-benchmark round.
    #[arg(long, default_value_t = 300_000)]
    requests: usize,
    /// HTTP/2 connections of the gRPC load (redis-benchmark uses
    /// connections x streams clients, the same number in flight).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Concurrent streams per connection of the gRPC load.
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// Skip the store figures.
    #[arg(long)]
    no_store: bool,
    /// Skip the gRPC and Redis figures.
    #[arg(long)]
    no_network: bool,
    /// Only the Redis backend's figures (for a quick look at them).
    #[arg(long)]
    only_redis: bool,
    /// Only the gRPC Health/Check and Resolve rows (alternating `--ratio-rounds`
    /// rounds) and the Resolve >= 0.95x Health/Check target: no store,
    /// Mint, durability, fixed-rate, log-off or Redis figures.
    #[arg(long)]
    grpc_ratio: bool,
    /// The server binary; defaults to `credential-authority` next to this one.
    #[arg(long)]
    server: Option<PathBuf>,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "target/bench.json")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.sizes = vec![1_000, 20_000];
        args.ops = 20_000;
        args.batch = 2_000;
        args.rounds = 1;
        args.ratio_rounds = 1;
        args.expiring = 20_000;
        args.thread_expiring = 5_000;
        args.requests = 2_000;
        args.connections = 2;
        args.streams = 4;
    }
    let mut report = Report {
        machine: network_bench::machine(),
        ..Report::default()
    };
    let server = match &args.server {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("credential-authority"),
    };
    let load = network_bench::Load {
        requests: args.requests,
        connections: args.connections,
        streams: args.streams,
        rounds: args.ratio_rounds,
        rps_per_connection: None,
    };
    if args.grpc_ratio {
        network_bench::run_ratio(&server, load, &mut report)?;
    } else if !args.no_network {
        // The network figures first: they come from other processes, and
        // the store figures leave gigabytes for the kernel to reclaim.
        if !args.only_redis {
            network_bench::run(&server, load, &mut report)?;
        }
        // RevokeAll at 1K and at 1M live (the sizes), or the
        // largest size below 1M.
        let live = args
            .sizes
            .iter()
            .copied()
            .filter(|&s| s <= 1_000_000)
            .max()
            .unwrap_or(1_000);
        let work = std::env::temp_dir().join(format!("ca-bench-redis-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        let result = redis_bench::run(&server, load, &work, live, &mut report);
        let _ = std::fs::remove_dir_all(&work);
        result?;
    }
    if !args.no_store && !args.grpc_ratio && !args.only_redis {
        let plan = StorePlan {
            ops: args.ops,
            batch: args.batch,
            rounds: args.rounds,
        };
        for &size in &args.sizes {
            store_bench::run_size(plan, size, &mut report);
        }
        if args.expiring > 0 {
            store_bench::expiry_storm(args.expiring, args.ops, &mut report);
        }
        if args.thread_expiring > 0 {
            store_bench::thread_shapes(args.ops.min(100_000), args.thread_expiring, &mut report);
        }
        store_bench::store_checks(&mut report, &args.sizes);
        // The durable figures at 1M live (the size), or the largest
        // size below it: each size means filling two stores.
        if let Some(size) = args.sizes.iter().copied().filter(|&s| s <= 1_000_000).max() {
            let plan = StorePlan {
                rounds: args.ratio_rounds,
                ..plan
            };
            durable_bench::run(plan, size, &mut report);
        }
    }
    print!("{}", report.markdown());
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, report.json())?;
    eprintln!("# figures written to {}", args.out.display());
    Ok(())
}
