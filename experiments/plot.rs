#![allow(dead_code)]
//! PNG plots for the experiment drivers (plotters, bitmap backend). Text uses a TrueType font
//! read from the system (DejaVu Sans on Debian: package fonts-dejavu-core).

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

fn init_font() -> Result<()> {
    static FONT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ];
        for c in candidates {
            if let Ok(bytes) = std::fs::read(c) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| format!("{c}: not a usable font"));
            }
        }
        Err("no TrueType font found for plot text (install fonts-dejavu-core)".into())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn range(xs: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = xs.clone().fold(f64::INFINITY, f64::min);
    let hi = xs.fold(f64::NEG_INFINITY, f64::max);
    let pad = if hi > lo { (hi - lo) * 0.08 } else { lo.abs().max(1.0) * 0.05 };
    (lo - pad, hi + pad)
}

type Chart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A titled chart with described axes over the given ranges, mesh drawn.
fn chart<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    title: Option<&str>,
    (x_desc, y_desc): (&str, &str),
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Result<Chart<'a, 'b>> {
    let mut builder = ChartBuilder::on(area);
    if let Some(t) = title {
        builder.caption(t, ("sans-serif", 22));
    }
    let mut c = builder
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    c.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw()?;
    Ok(c)
}

/// A line of means with ± std error bars: `points` are (x, mean, std).
pub fn line_with_errors(path: &Path, title: &str, x_desc: &str, y_desc: &str, points: &[(f64, f64, f64)]) -> Result<()> {
    if points.is_empty() {
        bail!("nothing to plot for {title}");
    }
    init_font()?;
    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let x = range(points.iter().map(|p| p.0));
    let y = range(points.iter().flat_map(|p| [p.1 - p.2, p.1 + p.2]));
    let mut chart = chart(&root, Some(title), (x_desc, y_desc), x, y)?;
    chart.draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), &BLUE))?;
    chart.draw_series(points.iter().map(|p| ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, BLUE.filled(), 10)))?;
    chart.draw_series(points.iter().map(|p| Circle::new((p.0, p.1), 4, BLUE.filled())))?;
    root.present()?;
    Ok(())
}

/// Points coloured by group: (group, x, y).
pub fn scatter(path: &Path, title: &str, x_desc: &str, y_desc: &str, points: &[(String, f64, f64)]) -> Result<()> {
    if points.is_empty() {
        bail!("nothing to plot for {title}");
    }
    init_font()?;
    let root = BitMapBackend::new(path, (800, 550)).into_drawing_area();
    root.fill(&WHITE)?;
    let x = range(points.iter().map(|p| p.1));
    let y = range(points.iter().map(|p| p.2));
    let mut chart = chart(&root, Some(title), (x_desc, y_desc), x, y)?;
    let mut groups: Vec<&str> = points.iter().map(|p| p.0.as_str()).collect();
    groups.sort();
    groups.dedup();
    for (i, g) in groups.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(points.iter().filter(|p| p.0 == *g).map(|p| Circle::new((p.1, p.2), 5, color.filled())))?
            .label(*g)
            .legend(move |(x, y)| Circle::new((x, y), 5, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One run's rounds: mean reward of the chosen arms per round (top) and tokens selected (bottom).
pub fn rounds(path: &Path, title: &str, rounds_csv: &str) -> Result<()> {
    init_font()?;
    let mut reward = Vec::new();
    let mut tokens = Vec::new();
    for line in rounds_csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let round: f64 = f[0].parse()?;
        let rs: Vec<f64> = f[3].split(' ').filter_map(|x| x.parse().ok()).collect();
        if !rs.is_empty() {
            reward.push((round, rs.iter().sum::<f64>() / rs.len() as f64));
        }
        tokens.push((round, f[7].parse::<f64>()?));
    }
    if tokens.is_empty() {
        bail!("no rounds to plot");
    }
    let root = BitMapBackend::new(path, (800, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(350);
    let x = range(tokens.iter().map(|p| p.0));
    let y = range(reward.iter().map(|p| p.1).chain([0.0]));
    let mut c = chart(&top, Some(title), ("round", "mean reward of chosen clusters"), x, y)?;
    c.draw_series(LineSeries::new(reward.iter().copied(), &RED))?;
    c.draw_series(LineSeries::new([(x.0, 0.0), (x.1, 0.0)], BLACK.mix(0.4)))?;
    let t = range(tokens.iter().map(|p| p.1).chain([0.0]));
    let mut c = chart(&bottom, None, ("round", "tokens selected"), x, t)?;
    c.draw_series(LineSeries::new(tokens.iter().copied(), &BLUE))?;
    root.present()?;
    Ok(())
}

/// One selector on the frontier plot: mean ± SD on both axes.
pub struct FrontierPoint {
    pub label: String,
    pub x: (f64, f64),
    pub y: (f64, f64),
    /// Its top-k fraction when it is a mixture point (random = 0, topk = 1).
    pub mix: Option<f64>,
    /// The curve it lies on and its place there: (family, T) for a selector run at several
    /// temperatures (`ucb:temperature=…`); points of one family are joined in order of T.
    pub curve: Option<(String, f64)>,
}

/// Every selector as a point with ±1 SD error bars (x = held-out loss, y = evaluation-reference
/// loss), labelled, and the mixture frontier drawn through the mixture points in order of p.
pub fn frontier(path: &Path, title: &str, x_desc: &str, y_desc: &str, points: &[FrontierPoint]) -> Result<()> {
    if points.is_empty() {
        bail!("nothing to plot for {title}");
    }
    init_font()?;
    let root = BitMapBackend::new(path, (900, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let x = range(points.iter().flat_map(|p| [p.x.0 - p.x.1, p.x.0 + p.x.1]));
    let y = range(points.iter().flat_map(|p| [p.y.0 - p.y.1, p.y.0 + p.y.1]));
    let mut chart = chart(&root, Some(title), (x_desc, y_desc), x, y)?;
    let mut mix: Vec<&FrontierPoint> = points.iter().filter(|p| p.mix.is_some()).collect();
    mix.sort_by(|a, b| a.mix.partial_cmp(&b.mix).expect("finite"));
    let grey = RGBColor(110, 110, 110);
    chart
        .draw_series(LineSeries::new(mix.iter().map(|p| (p.x.0, p.y.0)), grey.stroke_width(2)))?
        .label("random/top-k mixtures")
        .legend(move |(x, y)| PathElement::new([(x - 10, y), (x + 10, y)], grey.stroke_width(2)));
    let mut families: Vec<&str> = points.iter().filter_map(|p| p.curve.as_ref().map(|c| c.0.as_str())).collect();
    families.sort();
    families.dedup();
    for (f, family) in families.iter().enumerate() {
        let mut on: Vec<&FrontierPoint> = points.iter().filter(|p| p.curve.as_ref().is_some_and(|c| c.0 == *family)).collect();
        if on.len() < 2 {
            continue;
        }
        on.sort_by(|a, b| a.curve.as_ref().expect("on a curve").1.total_cmp(&b.curve.as_ref().expect("on a curve").1));
        let color = Palette99::pick(f + 1).to_rgba();
        let (lo, hi) = (on[0].curve.as_ref().expect("on a curve").1, on[on.len() - 1].curve.as_ref().expect("on a curve").1);
        chart
            .draw_series(LineSeries::new(on.iter().map(|p| (p.x.0, p.y.0)), color.stroke_width(2)))?
            .label(format!("{family}, T = {lo}…{hi}"))
            .legend(move |(x, y)| PathElement::new([(x - 10, y), (x + 10, y)], color.stroke_width(2)));
    }
    for (i, p) in points.iter().enumerate() {
        let family = p.curve.as_ref().and_then(|c| families.iter().position(|f| *f == c.0));
        let color = match (p.mix, family) {
            (Some(_), _) => grey.to_rgba(),
            (None, Some(f)) => Palette99::pick(f + 1).to_rgba(),
            (None, None) => Palette99::pick(i + families.len() + 1).to_rgba(),
        };
        chart.draw_series([ErrorBar::new_vertical(p.x.0, p.y.0 - p.y.1, p.y.0, p.y.0 + p.y.1, color.filled(), 8)])?;
        chart.draw_series([ErrorBar::new_horizontal(p.y.0, p.x.0 - p.x.1, p.x.0, p.x.0 + p.x.1, color.filled(), 8)])?;
        chart.draw_series([Circle::new((p.x.0, p.y.0), 5, color.filled())])?;
        chart.draw_series([Text::new(p.label.clone(), (p.x.0, p.y.0), ("sans-serif", 15).into_font().color(&BLACK))])?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
