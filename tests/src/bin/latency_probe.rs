//! A periodic foreground task that measures how late it wakes, standing in for a robot's own
//! service while the agent works. It sleeps until absolute deadlines one period apart and
//! records, for every wake, how long after its deadline it ran again. `scripts/bench.sh` runs it
//! alone and while the agent applies an update (see BENCHMARKS.md, "Foreground latency").
//!
//! `latency-probe [--seconds S] [--period-ms P] [--samples FILE]`
//!
//! Prints one line, `wakes=N missed=M p50_us=… p99_us=… max_us=…`; with `--samples`, it also
//! writes every wake's lateness in microseconds to FILE, one a line. A wake later than a whole
//! period skips the deadlines it missed, as a control loop would, and counts them in `missed`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Options {
    window: Duration,
    period: Duration,
    samples: Option<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        window: Duration::from_secs(10),
        period: Duration::from_millis(10),
        samples: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => o.window = Duration::from_secs_f64(number(&arg, &value()?)?),
            "--period-ms" => o.period = Duration::from_secs_f64(number(&arg, &value()?)? / 1e3),
            "--samples" => o.samples = Some(value()?),
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    if o.period.is_zero() || o.window < o.period {
        return Err("the window must hold at least one period".into());
    }
    Ok(o)
}

fn number(arg: &str, value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(n) if (0.0..1e9).contains(&n) => Ok(n),
        _ => Err(format!("{arg}: not a number of the right size: {value}")),
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("latency-probe: {e}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let end = start + o.window;
    let mut deadline = start + o.period;
    let mut late =
        Vec::with_capacity((o.window.as_micros() / o.period.as_micros().max(1)) as usize + 1);
    let mut missed = 0u64;
    while deadline <= end {
        let now = Instant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
        let woke = Instant::now();
        late.push(u64::try_from(woke.duration_since(deadline).as_micros()).unwrap_or(u64::MAX));
        deadline += o.period;
        while deadline <= woke {
            deadline += o.period;
            missed += 1;
        }
    }
    if let Some(file) = &o.samples {
        let text: String = late.iter().map(|us| format!("{us}\n")).collect();
        if let Err(e) = std::fs::write(file, text) {
            eprintln!("latency-probe: cannot write {file}: {e}");
            return ExitCode::FAILURE;
        }
    }
    late.sort_unstable();
    println!(
        "wakes={} missed={missed} p50_us={} p99_us={} max_us={}",
        late.len(),
        percentile(&late, 0.50),
        percentile(&late, 0.99),
        late[late.len() - 1],
    );
    ExitCode::SUCCESS
}
