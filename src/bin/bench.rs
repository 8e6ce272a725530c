//! Store-level benchmark: Resolve, Mint and RevokeAll on the embedded store,
//! side by side with the work no design can skip (a bare SHA-256 of each
//! token) and with what an in-process registry usually is (a
//! `Mutex<HashMap>` with the same renewal), in one run, so the figures are
//! ratios measured under the same machine noise.
//!
//! `cargo run --release --bin bench` runs the full sizes; `--smoke` runs tiny
//! sizes in a second (CI runs it so the benchmark keeps working; it never
//! fails on a timing). Results are printed as a table and written as JSON.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use clap::Parser;
use credential_authority::clock::{Clock, SystemClock};
use credential_authority::store::{NewCredential, Store, StoreConfig};
use credential_authority::token::{self, Token, TokenDigest};
use sha2::{Digest as _, Sha256};

/// Store-level benchmark of the credential authority.
#[derive(Debug, Parser)]
struct Args {
    /// Tiny sizes and short rounds: checks that the benchmark runs.
    #[arg(long)]
    smoke: bool,
    /// Live-credential counts to measure at.
    #[arg(long, value_delimiter = ',', default_value = "1000,1000000,10000000")]
    sizes: Vec<usize>,
    /// Resolve calls per measurement.
    #[arg(long, default_value_t = 2_000_000)]
    ops: usize,
    /// Rounds per measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "target/bench-store.json")]
    out: String,
}

/// One measured figure.
struct Figure {
    size: usize,
    name: String,
    threads: usize,
    ns_per_op: f64,
}

fn main() {
    let mut args = Args::parse();
    if args.smoke {
        args.sizes = vec![1_000, 20_000];
        args.ops = 20_000;
        args.rounds = 1;
    }
    let mut figures = Vec::new();
    let mut memory = Vec::new();
    for &size in &args.sizes {
        run_size(&args, size, &mut figures, &mut memory);
    }
    print_table(&figures, &memory);
    write_json(&args.out, &figures, &memory);
}

/// Resident set size of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A 36-character thread id, as orchestrators use (UUID-shaped).
fn thread_id(i: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", i as u32, i)
}

fn run_size(args: &Args, size: usize, figures: &mut Vec<Figure>, memory: &mut Vec<(usize, f64)>) {
    eprintln!("# {size} live credentials");
    let tokens: Vec<Token> = (0..size).map(|_| Token::generate()).collect();
    let texts: Vec<&str> = tokens.iter().map(Token::expose).collect();
    let threads: Vec<String> = (0..size).map(thread_id).collect();
    let instances: Vec<String> = (0..8).map(|i| format!("provider-instance-{i}")).collect();

    let before = resident_bytes();
    let store = Store::new(StoreConfig::default(), Arc::new(SystemClock::new()));
    let started = Instant::now();
    for (i, token) in tokens.iter().enumerate() {
        store.mint(
            token.digest(),
            NewCredential {
                thread_id: &threads[i],
                provider_instance_id: &instances[i % instances.len()],
                provider_kind: Some("claude"),
                ..NewCredential::default()
            },
        );
    }
    let mint_ns = started.elapsed().as_nanos() as f64 / size as f64;
    figures.push(Figure {
        size,
        name: "store Mint".into(),
        threads: 1,
        ns_per_op: mint_ns,
    });
    // The thread-id strings are the caller's; what is counted is the rest.
    let id_bytes = 36 + 16;
    let per_credential =
        (resident_bytes().saturating_sub(before)) as f64 / size as f64 - id_bytes as f64;
    memory.push((size, per_credential));

    // A fixed pseudo-random visiting order, the same for every contender.
    let order: Arc<Vec<u32>> = Arc::new({
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..args.ops)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % size as u64) as u32
            })
            .collect()
    });

    let texts: Arc<Vec<String>> = Arc::new(texts.iter().map(|t| t.to_string()).collect());
    for threads_used in [1, 2] {
        let ns = median(args.rounds, || {
            run_threads(threads_used, &order, |i| {
                let digest = token::parse(&texts[i]).expect("well-formed");
                std::hint::black_box(
                    store
                        .resolve_with(&digest, None, |view| view.deadlines)
                        .is_ok(),
                );
            })
        });
        figures.push(Figure {
            size,
            name: "store Resolve".into(),
            threads: threads_used,
            ns_per_op: ns,
        });

        let ns = median(args.rounds, || {
            run_threads(threads_used, &order, |i| {
                std::hint::black_box(Sha256::digest(texts[i].as_bytes()));
            })
        });
        figures.push(Figure {
            size,
            name: "floor: SHA-256".into(),
            threads: threads_used,
            ns_per_op: ns,
        });
    }

    let peer = MutexPeer::new(&tokens, &threads, &instances);
    drop(tokens);
    for threads_used in [1, 2] {
        let ns = median(args.rounds, || {
            run_threads(threads_used, &order, |i| {
                std::hint::black_box(peer.resolve(&texts[i]));
            })
        });
        figures.push(Figure {
            size,
            name: "peer: Mutex<HashMap>".into(),
            threads: threads_used,
            ns_per_op: ns,
        });
    }
    drop(peer);

    let started = Instant::now();
    let revoked = store.revoke_all(None);
    let revoke_ns = started.elapsed().as_nanos() as f64;
    assert_eq!(revoked as usize, size);
    figures.push(Figure {
        size,
        name: "store RevokeAll (one call)".into(),
        threads: 1,
        ns_per_op: revoke_ns,
    });
}

/// Runs `op` over `order` split across `threads` threads; ns per operation.
fn run_threads(threads: usize, order: &Arc<Vec<u32>>, op: impl Fn(usize) + Sync) -> f64 {
    let barrier = Barrier::new(threads);
    let chunk = order.len() / threads;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (op, barrier) = (&op, &barrier);
            let slice = &order[t * chunk..(t + 1) * chunk];
            scope.spawn(move || {
                barrier.wait();
                for &i in slice {
                    op(i as usize);
                }
            });
        }
    });
    started.elapsed().as_nanos() as f64 / (chunk * threads) as f64
}

fn median(rounds: usize, mut measure: impl FnMut() -> f64) -> f64 {
    let mut samples: Vec<f64> = (0..rounds.max(1)).map(|_| measure()).collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// What an in-process registry usually is: one mutex over a hash map, with
/// the same checks and sliding renewal as the store.
struct MutexPeer {
    clock: SystemClock,
    records: Mutex<HashMap<[u8; 32], PeerRecord>>,
}

struct PeerRecord {
    _thread_id: String,
    _provider_instance_id: String,
    last_used: u64,
    expires_at: u64,
}

impl MutexPeer {
    fn new(tokens: &[Token], threads: &[String], instances: &[String]) -> Self {
        let clock = SystemClock::new();
        let now = clock.now();
        let records = tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                (
                    *token.digest().as_bytes(),
                    PeerRecord {
                        _thread_id: threads[i].clone(),
                        _provider_instance_id: instances[i % instances.len()].clone(),
                        last_used: now,
                        expires_at: now + 30 * 86_400_000,
                    },
                )
            })
            .collect();
        MutexPeer {
            clock,
            records: Mutex::new(records),
        }
    }

    fn resolve(&self, token: &str) -> bool {
        let digest = TokenDigest::of(token);
        let now = self.clock.now();
        let mut records = self.records.lock().unwrap();
        match records.get_mut(digest.as_bytes()) {
            Some(record) if now < record.expires_at && now - record.last_used < 30 * 60_000 => {
                record.last_used = now;
                record.expires_at = record.expires_at.max(now + 30 * 86_400_000);
                true
            }
            _ => false,
        }
    }
}

fn print_table(figures: &[Figure], memory: &[(usize, f64)]) {
    println!("| live credentials | what | threads | wall ns per op (all threads) | ops/s |");
    println!("|---:|---|---:|---:|---:|");
    for f in figures {
        let ops = if f.name.contains("one call") {
            "-".to_owned()
        } else {
            format!("{:.2} M", 1e3 / f.ns_per_op)
        };
        println!(
            "| {} | {} | {} | {:.0} | {} |",
            f.size, f.name, f.threads, f.ns_per_op, ops
        );
    }
    println!();
    println!("| live credentials | resident bytes per credential beyond its id strings |");
    println!("|---:|---:|");
    for (size, bytes) in memory {
        println!("| {size} | {bytes:.0} |");
    }
}

fn write_json(path: &str, figures: &[Figure], memory: &[(usize, f64)]) {
    let mut json = String::from("{\"figures\":[");
    for (i, f) in figures.iter().enumerate() {
        let _ = write!(
            json,
            "{}{{\"size\":{},\"what\":\"{}\",\"threads\":{},\"ns_per_op\":{:.1}}}",
            if i == 0 { "" } else { "," },
            f.size,
            f.name,
            f.threads,
            f.ns_per_op
        );
    }
    json.push_str("],\"memory\":[");
    for (i, (size, bytes)) in memory.iter().enumerate() {
        let _ = write!(
            json,
            "{}{{\"size\":{size},\"bytes_per_credential\":{bytes:.1}}}",
            if i == 0 { "" } else { "," }
        );
    }
    json.push_str("]}\n");
    if let Some(parent) = std::path::Path::new(path).parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(path, json).expect("write the results");
    eprintln!("# figures written to {path}");
}
