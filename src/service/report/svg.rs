//! The report's charts as inline SVG, drawn on the server: stacked bars by day, the
//! hour × weekday heat map and horizontal bars. Every chart is an `<svg role="img">` with a
//! `<title>` and a `<desc>` it is labelled by, labelled axes, and fills told apart by
//! lightness *and* pattern so that a greyscale print keeps them apart. Every text drawn
//! goes through [`escape`]. Ids are prefixed by the chart's own id, since all charts share
//! one document.

use std::fmt::Write;

use super::html::{escape, number};

/// How one series is filled: a base colour and an optional line pattern over it.
#[derive(Debug, Clone, Copy)]
pub struct Fill {
    pub base: &'static str,
    /// `(stroke colour, kind)`: `/` diagonal, `\` other diagonal, `-` horizontal, `|`
    /// vertical, `x` cross-hatch.
    pub lines: Option<(&'static str, char)>,
}

/// Eight fills, from dark to light and plain to patterned, distinct in greyscale.
pub const FILLS: [Fill; 8] = [
    Fill { base: "#14305e", lines: None },
    Fill { base: "#5b82c0", lines: None },
    Fill { base: "#c3d3ec", lines: None },
    Fill { base: "#ffffff", lines: Some(("#14305e", '/')) },
    Fill { base: "#e4e4e4", lines: Some(("#444444", 'x')) },
    Fill { base: "#707070", lines: Some(("#ffffff", '-')) },
    Fill { base: "#b03a2e", lines: Some(("#ffffff", '\\')) },
    Fill { base: "#111111", lines: Some(("#ffffff", '|')) },
];

/// A named series and its fill.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    pub name: &'static str,
    pub fill: Fill,
}

const WIDTH: f64 = 760.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 14.0;

fn pattern_defs(out: &mut String, id: &str, series: &[Series]) {
    out.push_str("<defs>");
    for (i, s) in series.iter().enumerate() {
        let Some((stroke, kind)) = s.fill.lines else { continue };
        let lines = match kind {
            '/' => "M-1,1 l2,-2 M0,6 l6,-6 M5,7 l2,-2",
            '\\' => "M-1,5 l2,2 M0,0 l6,6 M5,-1 l2,2",
            '-' => "M0,3 h6",
            '|' => "M3,0 v6",
            _ => "M0,0 l6,6 M6,0 l-6,6",
        };
        let _ = write!(
            out,
            r#"<pattern id="{id}-p{i}" width="6" height="6" patternUnits="userSpaceOnUse"><rect width="6" height="6" fill="{}"/><path d="{lines}" stroke="{stroke}" stroke-width="1.2"/></pattern>"#,
            s.fill.base
        );
    }
    out.push_str("</defs>");
}

fn paint(id: &str, i: usize, fill: &Fill) -> String {
    if fill.lines.is_some() { format!("url(#{id}-p{i})") } else { fill.base.to_owned() }
}

/// A round upper bound for an axis over `0..=max`, and its tick step.
fn nice_scale(max: u64) -> (u64, u64) {
    if max == 0 {
        return (1, 1);
    }
    let rough = (max as f64 / 4.0).max(1.0);
    let magnitude = 10f64.powi(rough.log10().floor() as i32);
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= rough).unwrap_or(10.0 * magnitude);
    let step = step.max(1.0) as u64;
    (max.div_ceil(step) * step, step)
}

fn open_svg(out: &mut String, id: &str, height: f64, title: &str, desc: &str) {
    let _ = write!(
        out,
        r#"<svg id="{id}" class="chart" role="img" aria-labelledby="{id}-t {id}-d" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" preserveAspectRatio="xMinYMin meet" font-family="sans-serif" font-size="11"><title id="{id}-t">{}</title><desc id="{id}-d">{}</desc>"#,
        escape(title),
        escape(desc)
    );
}

fn legend(out: &mut String, id: &str, series: &[Series], y: f64) {
    let mut x = LEFT;
    for (i, s) in series.iter().enumerate() {
        let _ = write!(
            out,
            r##"<rect x="{x}" y="{}" width="14" height="10" fill="{}" stroke="#333" stroke-width="0.5"/><text x="{}" y="{y}">{}</text>"##,
            y - 9.0,
            paint(id, i, &s.fill),
            x + 18.0,
            escape(s.name)
        );
        x += 18.0 + 7.0 * s.name.chars().count() as f64 + 16.0;
    }
}

/// Stacked bars, one per labelled column (a day), each split by series. `values[c][s]` is
/// series `s` in column `c`. Empty segments draw nothing; each drawn one has a tooltip.
pub struct StackedBars<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub desc: &'a str,
    pub x_title: &'a str,
    pub y_title: &'a str,
    pub labels: &'a [String],
    pub series: &'a [Series],
    pub values: &'a [Vec<u64>],
}

impl StackedBars<'_> {
    pub fn render(&self) -> String {
        let height = 300.0;
        let plot_h = 200.0;
        let plot_w = WIDTH - LEFT - RIGHT;
        let bottom = TOP + plot_h;
        let mut out = String::new();
        open_svg(&mut out, self.id, height, self.title, self.desc);
        pattern_defs(&mut out, self.id, self.series);
        let max = self.values.iter().map(|c| c.iter().sum::<u64>()).max().unwrap_or(0);
        let (top, step) = nice_scale(max);
        let y_of = |v: u64| bottom - plot_h * v as f64 / top as f64;
        // Grid and y axis ticks.
        let mut tick = 0;
        while tick <= top {
            let y = y_of(tick);
            let _ = write!(
                out,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#d0d0d0" stroke-width="0.6"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                number(tick)
            );
            tick += step;
        }
        let n = self.labels.len().max(1);
        let band = plot_w / n as f64;
        let bar = (band * 0.8).max(0.8);
        out.push_str(r#"<g class="bars">"#);
        for (c, column) in self.values.iter().enumerate() {
            let x = LEFT + band * c as f64 + (band - bar) / 2.0;
            let mut base = 0u64;
            for (s, value) in column.iter().enumerate() {
                if *value == 0 {
                    continue;
                }
                let (y1, y0) = (y_of(base + value), y_of(base));
                let label = self.labels.get(c).map(String::as_str).unwrap_or("");
                let name = self.series.get(s).map_or("", |x| x.name);
                let fill = self.series.get(s).map_or_else(|| "#999".to_owned(), |x| paint(self.id, s, &x.fill));
                let _ = write!(
                    out,
                    r##"<rect x="{x:.2}" y="{y1:.2}" width="{bar:.2}" height="{:.2}" fill="{fill}" stroke="#ffffff" stroke-width="0.3"><title>{}: {} {}</title></rect>"##,
                    (y0 - y1).max(0.5),
                    escape(label),
                    number(*value),
                    escape(name)
                );
                base += value;
            }
        }
        out.push_str("</g>");
        // Axes, x labels (at most about twelve) and axis titles.
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{bottom}" stroke="#333"/><line x1="{LEFT}" x2="{}" y1="{bottom}" y2="{bottom}" stroke="#333"/>"##,
            LEFT + plot_w
        );
        let every = n.div_ceil(12).max(1);
        for (c, label) in self.labels.iter().enumerate().filter(|(c, _)| c % every == 0) {
            let x = LEFT + band * c as f64 + band / 2.0;
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{bottom}" y2="{}" stroke="#333"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                bottom + 4.0,
                bottom + 16.0,
                escape(label)
            );
        }
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text><text transform="translate(14 {}) rotate(-90)" text-anchor="middle" font-weight="bold">{}</text>"#,
            LEFT + plot_w / 2.0,
            bottom + 34.0,
            escape(self.x_title),
            TOP + plot_h / 2.0,
            escape(self.y_title)
        );
        legend(&mut out, self.id, self.series, bottom + 62.0);
        out.push_str("</svg>");
        out
    }
}

/// Hour (0–23, columns) × weekday (Monday first, rows) counts, shaded in six steps of
/// lightness with each count written in its cell; the cells inside `business` (weekday
/// rows and hour range) are outlined so after-hours cells stand apart.
pub struct HeatMap<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub desc: &'a str,
    pub cells: &'a [[u64; 24]; 7],
    /// Business hours: `(first hour, end hour exclusive)`, Monday to Friday.
    pub business: (usize, usize),
}

const SHADES: [&str; 6] = ["#ffffff", "#dbe4f3", "#a9bfe3", "#6f92cb", "#36589a", "#14264a"];

impl HeatMap<'_> {
    pub fn render(&self) -> String {
        const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        let (cell_w, cell_h) = ((WIDTH - LEFT - RIGHT) / 24.0, 24.0);
        let height = TOP + cell_h * 7.0 + 80.0;
        let mut out = String::new();
        open_svg(&mut out, self.id, height, self.title, self.desc);
        let max = self.cells.iter().flatten().copied().max().unwrap_or(0);
        let shade = |v: u64| -> usize { if v == 0 || max == 0 { 0 } else { 1 + ((v as f64 / max as f64) * 4.999) as usize } };
        for (d, row) in self.cells.iter().enumerate() {
            let y = TOP + cell_h * d as f64;
            let _ = write!(out, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, LEFT - 6.0, y + cell_h / 2.0 + 4.0, DAYS[d]);
            for (h, v) in row.iter().enumerate() {
                let x = LEFT + cell_w * h as f64;
                let s = shade(*v).min(SHADES.len() - 1);
                let ink = if s >= 3 { "#ffffff" } else { "#111111" };
                let _ = write!(
                    out,
                    r##"<rect x="{x:.2}" y="{y:.2}" width="{cell_w:.2}" height="{cell_h}" fill="{}" stroke="#bbbbbb" stroke-width="0.5"><title>{} {h:02}:00–{h:02}:59 UTC: {}</title></rect>"##,
                    SHADES[s],
                    DAYS[d],
                    number(*v)
                );
                if *v > 0 {
                    let _ = write!(
                        out,
                        r#"<text x="{:.2}" y="{:.1}" text-anchor="middle" font-size="8.5" fill="{ink}">{}</text>"#,
                        x + cell_w / 2.0,
                        y + cell_h / 2.0 + 3.0,
                        compact(*v)
                    );
                }
            }
        }
        let (b0, b1) = self.business;
        let _ = write!(
            out,
            r##"<rect x="{:.2}" y="{TOP}" width="{:.2}" height="{}" fill="none" stroke="#000000" stroke-width="2"/>"##,
            LEFT + cell_w * b0 as f64,
            cell_w * (b1.saturating_sub(b0)) as f64,
            cell_h * 5.0
        );
        let axis_y = TOP + cell_h * 7.0;
        for h in (0..24).step_by(3) {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{h:02}</text>"#,
                LEFT + cell_w * h as f64 + cell_w / 2.0,
                axis_y + 14.0
            );
        }
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">Hour of day (UTC)</text><text transform="translate(14 {}) rotate(-90)" text-anchor="middle" font-weight="bold">Weekday</text>"#,
            LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
            axis_y + 32.0,
            TOP + cell_h * 3.5
        );
        // The scale, and the business-hours outline explained.
        let ly = axis_y + 58.0;
        let _ = write!(out, r#"<text x="{LEFT}" y="{ly}">fewer</text>"#);
        for (i, s) in SHADES.iter().enumerate() {
            let _ = write!(
                out,
                r##"<rect x="{}" y="{}" width="18" height="10" fill="{s}" stroke="#888888" stroke-width="0.5"/>"##,
                LEFT + 40.0 + 20.0 * i as f64,
                ly - 9.0
            );
        }
        let _ = write!(
            out,
            r##"<text x="{}" y="{ly}">more</text><rect x="{}" y="{}" width="18" height="10" fill="none" stroke="#000000" stroke-width="2"/><text x="{}" y="{ly}">business hours (Mon–Fri {b0:02}:00–{b1:02}:00 UTC); every cell outside is after hours</text>"##,
            LEFT + 40.0 + 20.0 * 6.0 + 6.0,
            LEFT + 220.0,
            ly - 9.0,
            LEFT + 244.0
        );
        out.push_str("</svg>");
        out
    }
}

/// `1234` as `1.2k`, for the small cells of the heat map (the tooltip has the exact count).
fn compact(v: u64) -> String {
    match v {
        0..=999 => v.to_string(),
        1000..=999_999 => format!("{:.1}k", v as f64 / 1000.0),
        _ => format!("{:.1}M", v as f64 / 1_000_000.0),
    }
}

/// Horizontal bars with a label and a value each, longest first as given.
pub struct HorizontalBars<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub desc: &'a str,
    pub x_title: &'a str,
    /// `(label, value)`.
    pub bars: &'a [(String, u64)],
}

impl HorizontalBars<'_> {
    pub fn render(&self) -> String {
        let label_w = 210.0;
        let row = 22.0;
        let rows = self.bars.len().max(1) as f64;
        let height = TOP + row * rows + 50.0;
        let plot_w = WIDTH - label_w - RIGHT - 50.0;
        let mut out = String::new();
        open_svg(&mut out, self.id, height, self.title, self.desc);
        let max = self.bars.iter().map(|(_, v)| *v).max().unwrap_or(0);
        let (top, step) = nice_scale(max);
        let bottom = TOP + row * rows;
        let mut tick = 0;
        while tick <= top {
            let x = label_w + plot_w * tick as f64 / top as f64;
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{bottom}" stroke="#d0d0d0" stroke-width="0.6"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                bottom + 14.0,
                number(tick)
            );
            tick += step;
        }
        if self.bars.is_empty() {
            let _ = write!(
                out,
                r#"<text x="{}" y="{}" text-anchor="middle">No data in this period</text>"#,
                label_w + plot_w / 2.0,
                TOP + row / 2.0 + 4.0
            );
        }
        for (i, (label, value)) in self.bars.iter().enumerate() {
            let y = TOP + row * i as f64;
            let w = plot_w * *value as f64 / top as f64;
            let shown: String =
                if label.chars().count() > 30 { format!("{}…", label.chars().take(29).collect::<String>()) } else { label.clone() };
            let _ = write!(
                out,
                r##"<text x="{}" y="{:.1}" text-anchor="end">{}</text><rect x="{label_w}" y="{:.1}" width="{:.2}" height="{}" fill="#36589a"><title>{}: {}</title></rect><text x="{:.1}" y="{:.1}">{}</text>"##,
                label_w - 6.0,
                y + row / 2.0 + 4.0,
                escape(&shown),
                y + 3.0,
                w.max(0.5),
                row - 6.0,
                escape(label),
                number(*value),
                label_w + w + 4.0,
                y + row / 2.0 + 4.0,
                number(*value)
            );
        }
        let _ = write!(
            out,
            r##"<line x1="{label_w}" x2="{label_w}" y1="{TOP}" y2="{bottom}" stroke="#333"/><text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"##,
            label_w + plot_w / 2.0,
            bottom + 34.0,
            escape(self.x_title)
        );
        out.push_str("</svg>");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_round_and_cover_the_maximum() {
        assert_eq!(nice_scale(0), (1, 1));
        assert_eq!(nice_scale(3), (3, 1));
        assert_eq!(nice_scale(17), (20, 5));
        assert_eq!(nice_scale(1234), (1500, 500));
        for max in [1, 7, 99, 100, 101, 999_999] {
            let (top, step) = nice_scale(max);
            assert!(top >= max && top % step == 0 && top / step <= 8, "{max}: {top} {step}");
        }
    }

    #[test]
    fn chart_text_is_escaped_and_labelled() {
        let labels = vec!["<b>".to_owned()];
        let series = [Series { name: "a&b", fill: FILLS[3] }];
        let svg = StackedBars {
            id: "c",
            title: "T<",
            desc: "D\"",
            x_title: "x",
            y_title: "y",
            labels: &labels,
            series: &series,
            values: &[vec![3]],
        }
        .render();
        assert!(svg.contains("<title id=\"c-t\">T&lt;</title>") && svg.contains("D&quot;"), "{svg}");
        assert!(svg.contains("&lt;b&gt;") && svg.contains("a&amp;b") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains("url(#c-p0)") && svg.contains("<pattern id=\"c-p0\""), "{svg}");
        let bars = HorizontalBars { id: "h", title: "t", desc: "d", x_title: "x", bars: &[("<script>".to_owned(), 2)] }.render();
        assert!(!bars.contains("<script>") && bars.contains("&lt;script&gt;"), "{bars}");
    }
}
