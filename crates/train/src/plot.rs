//! The book's plots (train and validation loss or accuracy against tokens seen), as self-contained SVG.
use std::fmt::Write;

/// One evaluation: (tokens seen, train loss, validation loss).
pub type Point = (u64, f32, f32);

/// An SVG line chart of train and validation loss against tokens seen.
pub fn loss_svg(points: &[Point]) -> String {
    chart_svg(points, "loss")
}

/// An SVG line chart of training and validation `quantity` against tokens seen.
pub fn chart_svg(points: &[Point], quantity: &str) -> String {
    let (w, h, m) = (640.0f64, 400.0f64, 50.0f64);
    let finite = |x: f32| x.is_finite().then_some(x as f64);
    let ys: Vec<f64> = points
        .iter()
        .flat_map(|p| [finite(p.1), finite(p.2)])
        .flatten()
        .collect();
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
            (a.min(y), b.max(y))
        });
    let (lo, hi) = if lo < hi {
        (lo, hi)
    } else {
        (lo - 1.0, lo + 1.0)
    };
    let max_x = points.iter().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
    let sx = |x: u64| m + (x as f64 / max_x) * (w - 2.0 * m);
    let sy = |y: f64| h - m - (y - lo) / (hi - lo) * (h - 2.0 * m);
    let line = |pick: &dyn Fn(&Point) -> f32| -> String {
        points
            .iter()
            .filter_map(|p| finite(pick(p)).map(|y| format!("{:.1},{:.1}", sx(p.0), sy(y))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{m}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{m}" y1="{m}" x2="{m}" y2="{b}" stroke="black"/>
<text x="{cx}" y="{ty}" text-anchor="middle">tokens seen ({max_x:.0} max)</text>
<text x="12" y="{cy}" transform="rotate(-90 12 {cy})" text-anchor="middle">{quantity}</text>
<text x="{lx}" y="{m}" text-anchor="end">{hi:.2}</text><text x="{lx}" y="{b}" text-anchor="end">{lo:.2}</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{train}"/>
<polyline fill="none" stroke="#ff7f0e" stroke-width="2" stroke-dasharray="6 3" points="{val}"/>
<text x="{kx}" y="{k1}" fill="#1f77b4">training {quantity}</text><text x="{kx}" y="{k2}" fill="#ff7f0e">validation {quantity}</text>
</svg>
"##,
        b = h - m,
        r = w - m,
        cx = w / 2.0,
        ty = h - 12.0,
        cy = h / 2.0,
        lx = m - 4.0,
        kx = w - m - 140.0,
        k1 = m + 14.0,
        k2 = m + 30.0,
        train = line(&|p| p.1),
        val = line(&|p| p.2),
    );
    svg
}
