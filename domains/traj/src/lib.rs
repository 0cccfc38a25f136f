//! blockdiff-traj: road-segment trajectories for blockdiff (TrajDLM setting).
//!
//! Pipeline stages, one module each:
//! - [`network`]: OSM `.osm.pbf` → directed road segments, successor graph, R-tree.
//! - [`hoser`]: HOSER's `roadmap.geo` / `roadmap.rel` / `{train,val,test}.csv` in and out.
//! - [`simulate`]: a seeded trip simulator on a real network (gravity OD, noisy routes).
//! - [`matching`]: HMM map matching of GPS points to segment sequences (Newson & Krumm).
//! - [`tokenizer`]: segments as tokens, OD/time conditions, segment features, and the
//!   topology constraint for decoding.
//! - [`generate`]: training and sampling on the core engine, plus the baselines.
//! - [`metrics`]: HOSER's evaluation metrics.
//! - [`sampler_bench`]: the core's decoding policies on this benchmark.

#![warn(missing_docs)]

pub mod error;
pub mod generate;
pub mod hoser;
pub mod matching;
pub mod metrics;
pub mod network;
pub mod pipeline;
pub mod plot;
pub mod sampler_bench;
pub mod simulate;
pub mod tokenizer;
pub mod trip;

pub use error::TrajError;
pub use network::RoadNetwork;
pub use trip::Trip;

/// A progress bar on stderr (hidden when stderr is not a terminal or under CI).
pub(crate) fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    if std::env::var_os("CI").is_some() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:30}}] {{pos}}/{{len}} ({{eta}})"
        ))
        .expect("static template")
        .progress_chars("=> "),
    );
    bar
}
