//! PNG line charts for bench/RESULTS.md, drawn with plotters' bitmap backend.
//!
//! Text is rendered with ab_glyph from Debian's DejaVu Sans (package fonts-dejavu-core),
//! registered at run time: plotters' default font path goes through font-kit and fontconfig,
//! a C dependency the benchmarks do not otherwise need.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context as _, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT_FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (900, 520);
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Registers the font once per process; the error names the Debian package to install.
fn ensure_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT_FILE).map_err(|e| {
                format!(
                    "{FONT_FILE}: {e}; the plots need Debian's fonts-dejavu-core \
                     (apt-get install fonts-dejavu-core, or scripts/deps)"
                )
            })?;
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            register_font(FONT_FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT_FILE} is not a font plotters can read"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// One line of a chart: a legend label and its (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            label: label.into(),
            points,
        }
    }
}

/// What a chart shows.
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// Lower and upper bound of the y axis; `None` fits 0..max of the data (plus a margin).
    pub y_range: Option<(f64, f64)>,
}

/// Draws `series` as lines with point markers into the PNG file `path`.
pub fn line_chart(path: &Path, chart: &Chart<'_>, series: &[Series]) -> anyhow::Result<()> {
    ensure_font()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let x_min = points().map(|p| p.0).fold(x_max, f64::min).min(0.0);
    let (y_min, y_max) = chart.y_range.unwrap_or_else(|| {
        let top = points()
            .map(|p| p.1)
            .filter(|y| y.is_finite())
            .fold(0.0, f64::max);
        // Headroom above the data for the legend in the upper left.
        (0.0, (top * 1.35).max(1.0))
    });
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut ctx = ChartBuilder::on(&root)
            .caption(chart.title, (FONT_FAMILY, 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x_min..x_max, y_min..y_max)?;
        // Whole-number ticks when the x axis counts something (tenants) and the range is small.
        let whole = |v: &f64| {
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        };
        ctx.configure_mesh()
            .x_labels(((x_max - x_min).ceil() as usize + 1).clamp(2, 12))
            .x_label_formatter(&whole)
            .y_label_formatter(&whole)
            .x_desc(chart.x_label)
            .y_desc(chart.y_label)
            .label_style((FONT_FAMILY, 14))
            .axis_desc_style((FONT_FAMILY, 16))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let line: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| p.1.is_finite())
                .collect();
            ctx.draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                .label(s.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            if line.len() <= 120 {
                ctx.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
            }
        }
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT_FAMILY, 14))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_with_text() {
        if !Path::new(FONT_FILE).exists() {
            eprintln!("skipped: {FONT_FILE} missing (fonts-dejavu-core)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plots/chart.png");
        let chart = Chart {
            title: "creation time vs tenants",
            x_label: "tenants",
            y_label: "seconds",
            y_range: None,
        };
        let series = [
            Series::new("a", vec![(1.0, 2.0), (2.0, 3.5), (3.0, 3.0)]),
            Series::new("b", vec![(1.0, 1.0), (3.0, f64::NAN)]),
        ];
        line_chart(&path, &chart, &series).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
