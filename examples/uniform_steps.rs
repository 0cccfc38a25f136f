//! Uniform-kernel decoding quality against the number of reverse steps per block (Markov task,
//! small): `cargo run --release --example uniform_steps`.

use blockdiff_core::bench::{fit_markov_uniform, measure_decoding, MarkovTask, Repeats};
use blockdiff_core::sample::{CommitPolicy, SamplerConfig};

fn main() {
    let task = MarkovTask::small();
    let (model, loss) = fit_markov_uniform(&task, false);
    let h = task.source().sequence_entropy_per_token(task.seq_len);
    println!("held-out denoiser loss {loss:.4}, true entropy {h:.4}");
    for (steps, k, rounds) in [(2, 1, 0), (8, 1, 0), (32, 1, 0), (8, 2, 2)] {
        let cfg = SamplerConfig {
            block_size: task.block_size,
            max_len: task.seq_len,
            stop_at_eos: false,
            policy: CommitPolicy::Uniform {
                steps,
                corrector_k: k,
                corrector_rounds: rounds,
            },
            ..SamplerConfig::default()
        };
        let r = measure_decoding(
            &model,
            &task,
            "uniform",
            &cfg,
            8,
            Repeats {
                calls: 2,
                min_samples: 0,
            },
        );
        println!(
            "steps {steps} corrector {k}x{rounds}: NFE {:.0}, sample NLL {:.3}",
            r.nfe, r.sample_nll
        );
    }
}
