//! Sharded generation is exact: every shard of `I/N` seeds its requests by global id, so the
//! shards' outputs concatenated in order equal one run over all requests — whatever the batch
//! size each shard samples with.

use blockdiff_core::burn::prelude::*;
use blockdiff_core::condition::Conditioning;
use blockdiff_core::constraint::Unconstrained;
use blockdiff_core::model::BlockDiffusionConfig;
use blockdiff_core::sample::{
    sample, sample_on_cores, sample_with_ids, CommitPolicy, SamplerConfig,
};
use blockdiff_core::shard::Shard;
use blockdiff_core::CpuBackend as B;

#[test]
fn shards_concatenate_to_the_single_run() {
    let device = Default::default();
    B::seed(&device, 3);
    let cfg = BlockDiffusionConfig::new(24)
        .with_d_model(32)
        .with_n_layers(2)
        .with_n_heads(4);
    let model = cfg.init::<B>(&device);
    let requests: Vec<Conditioning> = (0..11)
        .map(|i| Conditioning {
            prompt: vec![4 + (i * 5 % 20) as u32, 4 + (i * 3 % 20) as u32],
            vectors: None,
            ..Default::default()
        })
        .collect();
    let scfg = SamplerConfig {
        block_size: 4,
        policy: CommitPolicy::Threshold { tau: 0.5 },
        max_len: 12,
        stop_at_eos: true,
        seed: 99,
        ..SamplerConfig::default()
    };
    let single = sample(&model, &cfg, &requests, &Unconstrained, &scfg, &device).unwrap();
    // The same split run on threads (`sample_on_cores`) gives the single run's output.
    let ids: Vec<u64> = (0..requests.len() as u64).collect();
    for parts in [2, 3] {
        let threaded = sample_on_cores(
            &model,
            &cfg,
            &requests,
            &ids,
            &Unconstrained,
            &scfg,
            &device,
            parts,
        )
        .unwrap();
        assert_eq!(threaded.sequences, single.sequences, "{parts} threads");
        assert_eq!(threaded.full_sequences, single.full_sequences);
        assert_eq!(threaded.commit_steps, single.commit_steps);
        assert_eq!(threaded.ended, single.ended);
        assert_eq!(threaded.stats.tokens, single.stats.tokens);
        assert_eq!(threaded.stats.batch, requests.len());
    }
    for count in [2, 3, 5] {
        let mut joined = Vec::new();
        for index in 0..count {
            let r = Shard::new(index, count).unwrap().range(requests.len());
            // Each shard samples in batches of 2 (the single run used one batch of 11).
            for start in (r.start..r.end).step_by(2) {
                let end = (start + 2).min(r.end);
                let ids: Vec<u64> = (start as u64..end as u64).collect();
                let out = sample_with_ids(
                    &model,
                    &cfg,
                    &requests[start..end],
                    &ids,
                    &Unconstrained,
                    &scfg,
                    &device,
                )
                .unwrap();
                joined.extend(out.sequences);
            }
        }
        assert_eq!(
            joined, single.sequences,
            "{count} shards differ from the single run"
        );
    }
    // Ids matter: the same requests under other ids give other samples.
    let shifted: Vec<u64> = (100..111).collect();
    let other = sample_with_ids(
        &model,
        &cfg,
        &requests,
        &shifted,
        &Unconstrained,
        &scfg,
        &device,
    )
    .unwrap();
    assert_ne!(other.sequences, single.sequences);
}
