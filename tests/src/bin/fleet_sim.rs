//! A fleet of robots polling one mock server, in virtual time, with the agent's own scheduling
//! code (`ota_agent::schedule::Scheduler`) and its own HTTP client (`ota_agent::client::Client`).
//! Every check is a real request to an `ota-mock-server` on loopback; the server is taken down
//! for a while (it answers 503, as a server behind a load balancer does), and whether a robot's
//! check succeeded is what the server answered. Time is virtual: the checks due in one virtual
//! minute are sent together (64 at a time), then the clock moves on. The simulation counts the
//! checks per minute, once with the agent's jitter and back-off and once with them switched off,
//! and prints the rates and a chart of the minutes around the outage.
//!
//! `fleet-sim [--robots N] [--hours H] [--outage-at-hour A] [--outage-minutes M] [--seed S]`

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use ota_agent::client::{CheckAnswer, CheckRequest, Client};
use ota_agent::schedule::{Scheduler, Timing, human};
use ota_mock_server::{Catalog, Endpoint, Fault, MockServer};

#[derive(Debug, Clone, Copy)]
struct Options {
    robots: u64,
    hours: u64,
    outage_at_minute: u64,
    outage_minutes: u64,
    seed: u64,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        robots: 10_000,
        hours: 24,
        outage_at_minute: 12 * 60,
        outage_minutes: 10,
        seed: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value: u64 = args
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--robots" => o.robots = value,
            "--hours" => o.hours = value,
            "--outage-at-hour" => o.outage_at_minute = value * 60,
            "--outage-minutes" => o.outage_minutes = value,
            "--seed" => o.seed = value,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.outage_at_minute + o.outage_minutes + 60 > o.hours * 60 || o.outage_at_minute < 120 {
        return Err("the outage must start after two hours and end an hour before the run".into());
    }
    Ok(o)
}

/// The agent's defaults, as a config without an `[agent]` section gets them.
fn agent_timing() -> Timing {
    Timing::from_config(&ota_agent::config::Settings::default())
}

/// The mock server the fleet polls, and the agent's client for it.
struct Server {
    mock: MockServer,
    client: Arc<Client>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Result<Server, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let catalog =
            ota_mock_server::demo::generate(dir.path(), 4096).map_err(|e| e.to_string())?;
        let catalog = Catalog::load(&catalog).map_err(|e| e.to_string())?;
        let mock = MockServer::start(catalog)
            .await
            .map_err(|e| e.to_string())?;
        let config = format!(
            r#"
[server]
url = "{}"
client_id = "mobile_1"
client_secret = "secret_1"
username = "aa"
password = "aa"

[robot]
id = "fleet"
version = "1"
language = "CN"

[[package]]
name = "com.ubtechinc.alpha2services"
file_name = "service5mic"
path = "/nonexistent/fleet"
version = "18"
"#,
            mock.uri()
        );
        let config = ota_agent::config::Config::parse(&config, std::path::Path::new("fleet.toml"))
            .map_err(|e| ota_agent::error_chain(&e))?;
        let client = Client::new(&config).map_err(|e| ota_agent::error_chain(&e))?;
        Ok(Server {
            mock,
            client: Arc::new(client),
            _dir: dir,
        })
    }

    /// The checks (not the token requests) the server recorded so far.
    fn checks_recorded(&self) -> usize {
        self.mock
            .requests()
            .iter()
            .filter(|r| r.path.starts_with("/file/download"))
            .count()
    }

    fn set_down(&self, down: bool) {
        self.mock.clear_faults();
        if down {
            self.mock.inject(
                Fault::status(Endpoint::Download, 503, r#"{"error":"unavailable"}"#)
                    .times(u32::MAX),
            );
        }
    }

    /// Sends `n` checks at once (64 in flight); returns which of them succeeded.
    async fn checks(&self, n: usize) -> Vec<bool> {
        let mut results = vec![false; n];
        let mut set = tokio::task::JoinSet::new();
        let mut record = |r: Result<(usize, bool), tokio::task::JoinError>| {
            let (i, ok) = r.expect("a check task panicked");
            results[i] = ok;
        };
        for i in 0..n {
            if set.len() >= 64 {
                if let Some(r) = set.join_next().await {
                    record(r);
                }
            }
            let client = self.client.clone();
            set.spawn(async move {
                let answer = client
                    .check(&CheckRequest {
                        package_name: "com.ubtechinc.alpha2services",
                        version: "18",
                        file_name: "service5mic",
                        language: "CN",
                    })
                    .await;
                (
                    i,
                    matches!(answer, Ok(a) if !matches!(a, CheckAnswer::Failed(_))),
                )
            });
        }
        while let Some(r) = set.join_next().await {
            record(r);
        }
        results
    }
}

/// Checks per minute over the whole run, and how many of them the server recorded.
async fn simulate(o: &Options, timing: Timing, server: &Server) -> (Vec<u64>, usize) {
    let before = server.checks_recorded();
    let mut phase = fastrand::Rng::with_seed(o.seed);
    let mut robots: Vec<Scheduler> = (0..o.robots)
        .map(|i| {
            Scheduler::new(
                timing,
                fastrand::Rng::with_seed(o.seed.wrapping_mul(1_000_003) ^ i),
            )
        })
        .collect();
    // The fleet has been running for a while: its robots' next polls are spread over an interval.
    let interval_ms = timing.interval.as_millis() as u64;
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> = (0..robots.len())
        .map(|i| Reverse((phase.u64(0..interval_ms), i)))
        .collect();
    let minutes = o.hours * 60;
    let outage = o.outage_at_minute..o.outage_at_minute + o.outage_minutes;
    let mut per_minute = vec![0u64; minutes as usize];
    let mut down = false;
    for minute in 0..minutes {
        if outage.contains(&minute) != down {
            down = !down;
            server.set_down(down);
        }
        let end = (minute + 1) * 60_000;
        // A retry may fall due within the same minute: the minute ends when none is left.
        loop {
            let mut due = Vec::new();
            while let Some(&Reverse((at, robot))) = queue.peek() {
                if at >= end {
                    break;
                }
                queue.pop();
                due.push((at, robot));
            }
            if due.is_empty() {
                break;
            }
            per_minute[minute as usize] += due.len() as u64;
            let answers = server.checks(due.len()).await;
            // Every answer must be what the server's state says: a client-side failure would
            // otherwise pass for an outage and start a back-off the fleet would not see.
            if answers.contains(&down) {
                eprintln!(
                    "fleet-sim: at minute {minute} a check's answer does not match the server being {}",
                    if down { "down" } else { "up" }
                );
                std::process::exit(1);
            }
            for ((at, robot), ok) in due.into_iter().zip(answers) {
                let wait = robots[robot].after(ok, None);
                queue.push(Reverse((at + wait.as_millis() as u64, robot)));
            }
        }
    }
    server.set_down(false);
    (per_minute, server.checks_recorded() - before)
}

struct Figures {
    steady_mean: f64,
    steady_peak: f64,
    outage_peak: f64,
    after_peak: f64,
    later_peak: f64,
}

/// Rates in checks per second, from counts per minute.
fn figures(o: &Options, per_minute: &[u64]) -> Figures {
    let rate = |m: &u64| *m as f64 / 60.0;
    let peak = |range: std::ops::Range<u64>| {
        per_minute[range.start as usize..range.end as usize]
            .iter()
            .map(rate)
            .fold(0.0, f64::max)
    };
    let steady = &per_minute[60..o.outage_at_minute as usize];
    let back = o.outage_at_minute + o.outage_minutes;
    Figures {
        steady_mean: steady.iter().map(rate).sum::<f64>() / steady.len() as f64,
        steady_peak: peak(60..o.outage_at_minute),
        outage_peak: peak(o.outage_at_minute..back),
        after_peak: peak(back..back + 60),
        later_peak: peak(back + 60..o.hours * 60),
    }
}

/// Five-minute bars from 30 minutes before the outage to 90 minutes after it began.
fn chart(o: &Options, per_minute: &[u64], scale: f64) -> String {
    let mut out = String::new();
    let start = o.outage_at_minute - 30;
    for bucket in (start..o.outage_at_minute + 90).step_by(5) {
        let rate = per_minute[bucket as usize..bucket as usize + 5]
            .iter()
            .sum::<u64>() as f64
            / 300.0;
        let bar = "#".repeat(((rate / scale) * 50.0).round() as usize);
        let offset = bucket as i64 - o.outage_at_minute as i64;
        let mark = if (o.outage_at_minute..o.outage_at_minute + o.outage_minutes).contains(&bucket)
        {
            "down"
        } else {
            ""
        };
        out += &format!("  {offset:+4} min {mark:>4} {rate:8.2}/s {bar}\n");
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fleet-sim: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "fleet simulation: {} robots, {} h of virtual time, the server down for {} min from hour {}",
        o.robots,
        o.hours,
        o.outage_minutes,
        o.outage_at_minute / 60
    );
    let t = agent_timing();
    println!(
        "the agent's defaults: poll every {} plus up to {} of jitter; back-off from {} to {}\n",
        human(t.interval),
        human(t.jitter),
        human(t.retry_base),
        human(t.retry_max)
    );
    let server = match Server::start().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleet-sim: cannot start the mock server: {e}");
            std::process::exit(1);
        }
    };
    let started = std::time::Instant::now();
    let (with, recorded_with) = simulate(&o, agent_timing(), &server).await;
    let (without, recorded_without) = simulate(&o, agent_timing().without_spread(), &server).await;
    let sent = |m: &[u64]| m.iter().sum::<u64>();
    println!(
        "checks sent / recorded by the mock server at {}: {} / {} with jitter, {} / {} without ({:.0} s of real time)\n",
        server.mock.uri(),
        sent(&with),
        recorded_with,
        sent(&without),
        recorded_without,
        started.elapsed().as_secs_f64()
    );
    if sent(&with) != recorded_with as u64 || sent(&without) != recorded_without as u64 {
        eprintln!("fleet-sim: the server did not record every check");
        std::process::exit(1);
    }
    let (fw, fo) = (figures(&o, &with), figures(&o, &without));
    println!("| checks per second | with jitter and back-off | without |");
    println!("|---|---|---|");
    println!(
        "| steady state, mean | {:.2} | {:.2} |",
        fw.steady_mean, fo.steady_mean
    );
    println!(
        "| steady state, peak minute | {:.2} | {:.2} |",
        fw.steady_peak, fo.steady_peak
    );
    println!(
        "| during the outage, peak minute | {:.2} | {:.2} |",
        fw.outage_peak, fo.outage_peak
    );
    println!(
        "| hour after the outage, peak minute | {:.2} | {:.2} |",
        fw.after_peak, fo.after_peak
    );
    println!(
        "| rest of the run, peak minute | {:.2} | {:.2} |",
        fw.later_peak, fo.later_peak
    );
    let ratio = |f: &Figures| f.after_peak / f.steady_mean;
    println!(
        "| peak after the outage / steady mean | {:.1}x | {:.1}x |\n",
        ratio(&fw),
        ratio(&fo)
    );
    let verdict = if ratio(&fw) < 3.0 { "met" } else { "NOT met" };
    println!("goal (with jitter, peak after the outage below 3x the steady mean): {verdict}\n");
    let scale = [&with, &without]
        .iter()
        .flat_map(|r| r.iter())
        .map(|m| *m as f64 / 60.0)
        .fold(1.0, f64::max);
    println!("with jitter and back-off, checks per second in 5-minute buckets:");
    print!("{}", chart(&o, &with, scale));
    println!("\nwithout them:");
    print!("{}", chart(&o, &without, scale));
}
