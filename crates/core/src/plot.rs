//! Shared plotting support: the domains draw PNGs with `plotters`, whose text needs a TrueType
//! font registered at run time (DejaVu Sans from Debian's `fonts-dejavu-core`, or the file
//! named by `BLOCKDIFF_FONT`). Without one, plots are drawn without labels.

use std::sync::OnceLock;

use plotters::chart::{ChartContext, SeriesAnno};
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Registers a sans-serif font once per process; false when none was found.
pub fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let candidates = [
            std::env::var("BLOCKDIFF_FONT").unwrap_or_default(),
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into(),
            "/usr/share/fonts/TTF/DejaVuSans.ttf".into(),
        ];
        for c in candidates.iter().filter(|c| !c.is_empty()) {
            if let Ok(bytes) = std::fs::read(c) {
                // Registered once per process; the font lives as long as the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws a PNG of `size` pixels at `path`, atomically. `draw` paints a white root area backed by
/// a temporary file beside the target, which is renamed over `path` once presented. Errors are
/// described as text for the domain's own plot error.
pub fn write_png(
    path: &std::path::Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp.png",
        path.file_stem().and_then(|s| s.to_str()).unwrap_or("plot")
    ));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming {}: {e}", tmp.display()))
}

/// Labels the last drawn series with `label` in colour `color` for [`draw_legend`].
pub fn label_series<DB: DrawingBackend>(
    series: &mut SeriesAnno<'_, DB>,
    label: impl Into<String>,
    color: RGBColor,
) {
    series
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
}

/// Draws the legend box of the labelled series.
pub fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}
