//! Shared plotting support: the domains draw PNGs with `plotters`, whose text needs a TrueType
//! font registered at run time (DejaVu Sans from Debian's `fonts-dejavu-core`, or the file
//! named by `BLOCKDIFF_FONT`). Without one, plots are drawn without labels.

use std::sync::OnceLock;

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
