//! Regret-vs-queries PNG for `blockdiff dag search`.

use std::path::Path;

use plotters::prelude::*;

use crate::error::DagError;
use crate::search::Summary;

/// Draws mean regret (log scale) against unique queries, one line per method, into `path`
/// (written atomically).
pub fn plot_regret(summaries: &[Summary], path: &Path) -> Result<(), DagError> {
    let text = blockdiff_core::plot::font_ready();
    let budget = summaries.iter().map(|s| s.budget).max().unwrap_or(1).max(2);
    let floor = 1e-3;
    let top = summaries
        .iter()
        .flat_map(|s| s.mean_regret.iter().copied())
        .filter(|v| v.is_finite())
        .fold(floor * 10.0, f64::max)
        * 1.5;
    blockdiff_core::plot::write_png(path, (800, 520), |root| {
        let mut b = ChartBuilder::on(root);
        b.margin(16).x_label_area_size(40).y_label_area_size(60);
        if text {
            b.caption(
                format!(
                    "{}: mean regret vs unique queries",
                    summaries.first().map_or("", |s| s.space.as_str())
                ),
                ("sans-serif", 20),
            );
        }
        let mut chart = b
            .build_cartesian_2d(1..budget, (floor..top).log_scale())
            .map_err(|e| e.to_string())?;
        if text {
            chart
                .configure_mesh()
                .x_desc("unique queries")
                .y_desc("regret")
                .draw()
                .map_err(|e| e.to_string())?;
        } else {
            chart
                .configure_mesh()
                .disable_x_mesh()
                .disable_y_mesh()
                .x_labels(0)
                .y_labels(0)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        let colors = [RED, BLUE, GREEN, MAGENTA, BLACK];
        for (k, s) in summaries.iter().enumerate() {
            let c = colors[k % colors.len()];
            let series = &mut chart
                .draw_series(LineSeries::new(
                    s.mean_regret
                        .iter()
                        .enumerate()
                        .map(|(q, &r)| (q + 1, r.max(floor))),
                    c.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
            if text {
                blockdiff_core::plot::label_series(series, s.method.clone(), c);
            }
        }
        if text {
            blockdiff_core::plot::draw_legend(&mut chart)?;
        }
        Ok(())
    })
    .map_err(|message| DagError::Plot {
        path: path.to_path_buf(),
        message,
    })
}
