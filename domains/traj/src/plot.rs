//! PNG plots for `traj eval`: real vs generated trips over the network, and the trip-distance
//! histograms. Text needs a TrueType font, loaded at run time (DejaVu Sans from Debian's
//! `fonts-dejavu-core`, or `BLOCKDIFF_FONT`); without one the plots are drawn without labels.

use std::path::Path;

use plotters::prelude::*;

use crate::error::TrajError;
use crate::network::RoadNetwork;

/// One set of routes to draw on a map panel.
pub struct RouteSet<'a> {
    /// Panel title.
    pub title: &'a str,
    /// Routes (segment ids).
    pub routes: &'a [Vec<usize>],
    /// Line colour.
    pub color: RGBColor,
}

/// Draws one map panel per route set (network in grey, routes translucent) plus a histogram
/// of trip distances of every set, into a PNG at `path` (written atomically).
pub fn plot_trips(net: &RoadNetwork, sets: &[RouteSet<'_>], path: &Path) -> Result<(), TrajError> {
    let text = blockdiff_core::plot::font_ready();
    let panels = sets.len().max(1) as u32;
    let (w, h) = (520 * panels, 900);
    blockdiff_core::plot::write_png(path, (w, h), |root| {
        let (maps, hist) = root.split_vertically(560);
        let bb = net.bbox();
        let lines: Vec<Vec<(f64, f64)>> = net
            .segments
            .iter()
            .map(|s| s.points().map(|p| (p[0], p[1])).collect())
            .collect();
        for (area, set) in maps.split_evenly((1, sets.len().max(1))).iter().zip(sets) {
            let mut b = ChartBuilder::on(area);
            b.margin(10);
            if text {
                b.caption(set.title, ("sans-serif", 20));
            }
            let mut chart = b
                .build_cartesian_2d(bb[0]..bb[2], bb[1]..bb[3])
                .map_err(|e| e.to_string())?;
            for l in &lines {
                chart
                    .draw_series(LineSeries::new(l.iter().copied(), RGBColor(200, 200, 200)))
                    .map_err(|e| e.to_string())?;
            }
            for r in set.routes.iter().take(400) {
                let pts: Vec<(f64, f64)> = net
                    .route_points(r)
                    .into_iter()
                    .map(|p| (p[0], p[1]))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts, set.color.mix(0.08).stroke_width(2)))
                    .map_err(|e| e.to_string())?;
            }
        }
        // Distance histograms (km), 40 bins over the pooled range, as outlines.
        let dists: Vec<Vec<f64>> = sets
            .iter()
            .map(|s| {
                s.routes
                    .iter()
                    .map(|r| net.route_length_m(r) / 1000.0)
                    .collect()
            })
            .collect();
        let max = dists.iter().flatten().copied().fold(0.1f64, f64::max);
        let bins = 40usize;
        let hists: Vec<Vec<f64>> = dists
            .iter()
            .map(|d| {
                let mut hcount = vec![0.0; bins];
                for &x in d {
                    hcount[((x / max * bins as f64) as usize).min(bins - 1)] += 1.0;
                }
                let n = d.len().max(1) as f64;
                hcount.iter().map(|c| c / n).collect()
            })
            .collect();
        let ymax = hists.iter().flatten().copied().fold(0.01f64, f64::max) * 1.1;
        let mut b = ChartBuilder::on(&hist);
        b.margin(20);
        if text {
            b.caption(
                "trip distance (km): share of trips per bin",
                ("sans-serif", 20),
            )
            .x_label_area_size(30)
            .y_label_area_size(50);
        }
        let mut chart = b
            .build_cartesian_2d(0.0..max, 0.0..ymax)
            .map_err(|e| e.to_string())?;
        if text {
            chart
                .configure_mesh()
                .disable_mesh()
                .draw()
                .map_err(|e| e.to_string())?;
        }
        for (hs, set) in hists.iter().zip(sets) {
            let step = max / bins as f64;
            let pts: Vec<(f64, f64)> = hs
                .iter()
                .enumerate()
                .flat_map(|(k, &v)| [(k as f64 * step, v), ((k + 1) as f64 * step, v)])
                .collect();
            let s = &mut chart
                .draw_series(LineSeries::new(pts, set.color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            if text {
                blockdiff_core::plot::label_series(s, set.title, set.color);
            }
        }
        if text {
            blockdiff_core::plot::draw_legend(&mut chart)?;
        }
        Ok(())
    })
    .map_err(|message| TrajError::Plot {
        path: path.to_path_buf(),
        message,
    })
}
