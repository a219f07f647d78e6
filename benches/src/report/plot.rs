//! Figures with plotters, drawn twice from one description: SVG (text as text) and PNG.
//! Text is laid out by ab_glyph from a TrueType font found at run time ([`font`]).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::{ReportError, Result};

/// Width and height of every figure, pixels.
pub const SIZE: (u32, u32) = (960, 600);

/// One axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// Its label (with the unit).
    pub label: String,
    /// Whether values are spread on a log scale.
    pub log: bool,
}

impl Axis {
    /// A linear axis.
    pub fn linear(label: &str) -> Self {
        Self {
            label: label.into(),
            log: false,
        }
    }

    /// A log axis (values must be positive; drawn linear when they span less than a factor
    /// of 20, where a log axis would label no tick).
    pub fn log(label: &str) -> Self {
        Self {
            label: label.into(),
            log: true,
        }
    }
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A solid line through the points.
    Line,
    /// A dashed line through the points.
    Dashed,
    /// Markers only, each labelled with its point label where there is one.
    Points,
    /// A solid line with markers.
    LinePoints,
}

/// One series of a figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// The points, in data units.
    pub points: Vec<(f64, f64)>,
    /// Per-point labels (empty, or as long as `points`).
    pub labels: Vec<String>,
    /// How it is drawn.
    pub mark: Mark,
    /// Index into the palette; series sharing a colour share an index.
    pub color: usize,
}

impl Series {
    /// A solid line in the next colour of its figure (set by [`Figure`]'s order).
    pub fn line(name: &str, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            labels: Vec::new(),
            mark: Mark::Line,
            color: usize::MAX,
        }
    }

    /// This series drawn as `mark`.
    pub fn mark(mut self, mark: Mark) -> Self {
        self.mark = mark;
        self
    }

    /// This series in palette colour `color`.
    pub fn color(mut self, color: usize) -> Self {
        self.color = color;
        self
    }

    /// This series with one label per point.
    pub fn labels(mut self, labels: Vec<String>) -> Self {
        self.labels = labels;
        self
    }
}

/// A figure: a title, axes, series, and notes under the plot (machine, date, command, the
/// paper's number where one exists).
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// File stem within the report directory.
    pub stem: String,
    /// The title.
    pub title: String,
    /// Lines printed under the plot.
    pub notes: Vec<String>,
    /// The horizontal axis.
    pub x: Axis,
    /// The vertical axis.
    pub y: Axis,
    /// The series.
    pub series: Vec<Series>,
    /// Where the legend goes (where the data leave room).
    pub legend: Corner,
}

/// A corner of the plot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corner {
    /// Top left.
    UpperLeft,
    /// Top right.
    UpperRight,
    /// Bottom right.
    LowerRight,
}

/// Where a TrueType font may live when `SKILLZIP_FONT` does not name one.
const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a TrueType font as plotters' `sans-serif` once per process: `SKILLZIP_FONT`, a
/// few usual paths, or the first `.ttf` under `/usr/share/fonts`.
pub fn font() -> Result<&'static Path> {
    static FONT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let found = FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("SKILLZIP_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .chain(first_ttf(Path::new("/usr/share/fonts"), 4))
            .collect();
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, bytes);
                return Ok(path);
            }
        }
        Err("no TrueType font found for figure text; set SKILLZIP_FONT to a .ttf file".into())
    });
    found.as_deref().map_err(|message| ReportError::Plot {
        figure: "(font)".into(),
        message: message.clone(),
    })
}

fn first_ttf(dir: &Path, depth: usize) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    entries
        .iter()
        .find(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")))
        .cloned()
        .or_else(|| {
            (depth > 0)
                .then(|| {
                    entries
                        .iter()
                        .filter(|p| p.is_dir())
                        .find_map(|p| first_ttf(p, depth - 1))
                })
                .flatten()
        })
}

/// Draws `figure` as `<dir>/<stem>.svg` and `<dir>/<stem>.png` (each written to a temporary
/// name and renamed).
pub fn render(figure: &Figure, dir: &Path) -> Result<()> {
    font()?;
    let fail = |message: String| ReportError::Plot {
        figure: figure.stem.clone(),
        message,
    };
    for s in &figure.series {
        if !s.labels.is_empty() && s.labels.len() != s.points.len() {
            return Err(fail(format!("series {}: labels and points differ", s.name)));
        }
        let bad_log = |axis: &Axis, v: f64| axis.log && v <= 0.0;
        if let Some(p) = s.points.iter().find(|(x, y)| {
            !x.is_finite() || !y.is_finite() || bad_log(&figure.x, *x) || bad_log(&figure.y, *y)
        }) {
            return Err(fail(format!(
                "series {}: point {p:?} cannot be drawn",
                s.name
            )));
        }
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root, figure).map_err(|e| fail(e.to_string()))?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    super::write_file(&dir.join(format!("{}.svg", figure.stem)), svg.as_bytes())?;
    let (w, h) = SIZE;
    let mut rgb = vec![0u8; 3 * (w * h) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        draw(&root, figure).map_err(|e| fail(e.to_string()))?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    let png = encode_png(&rgb, SIZE).map_err(|e| fail(e.to_string()))?;
    super::write_file(&dir.join(format!("{}.png", figure.stem)), &png)
}

/// PNG bytes of an RGB image: indexed colour when it has at most 256 colours (figures
/// usually do; several times smaller in git), true colour otherwise; best compression.
fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut palette: Vec<[u8; 3]> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let mut indexed = Vec::with_capacity(rgb.len() / 3);
    for px in rgb.chunks_exact(3) {
        let c = [px[0], px[1], px[2]];
        let i = *index.entry(c).or_insert_with(|| {
            palette.push(c);
            palette.len() - 1
        });
        if i > 255 {
            indexed.clear();
            break;
        }
        indexed.push(i as u8);
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Best);
        let data = if indexed.len() * 3 == rgb.len() {
            encoder.set_color(png::ColorType::Indexed);
            encoder.set_palette(palette.concat());
            &indexed[..]
        } else {
            encoder.set_color(png::ColorType::Rgb);
            rgb
        };
        let mut writer = encoder.write_header()?;
        writer.write_image_data(data)?;
        writer.finish()?;
    }
    Ok(out)
}

/// `[lo, hi]` of `values` padded a little (multiplicatively on a log axis), and by a quarter
/// of the span on the right where point labels need room.
fn range(values: impl Iterator<Item = f64>, log: bool, room_right: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return if log { (1.0, 10.0) } else { (0.0, 1.0) };
    }
    let right = if room_right { 0.25 } else { 0.06 };
    if log {
        let span = (hi / lo).log10().max(0.3);
        (lo / 10f64.powf(0.06 * span), hi * 10f64.powf(right * span))
    } else {
        let span = if hi > lo { hi - lo } else { hi.abs().max(1.0) };
        (lo - 0.06 * span, hi + right * span)
    }
}

/// `text` in lines of at most `width` characters, broken at spaces (a longer word stays whole).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// A tick label in few digits.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{:.3}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .into()
    } else {
        format!("{v:.3}")
    }
}

fn color(i: usize) -> RGBColor {
    // Okabe–Ito, readable by colour-blind readers, then Tableau's.
    const COLORS: [(u8, u8, u8); 12] = [
        (0, 114, 178),
        (213, 94, 0),
        (0, 158, 115),
        (204, 121, 167),
        (230, 159, 0),
        (86, 180, 233),
        (0, 0, 0),
        (240, 228, 66),
        (127, 127, 127),
        (140, 86, 75),
        (148, 103, 189),
        (23, 190, 207),
    ];
    let (r, g, b) = COLORS[i % COLORS.len()];
    RGBColor(r, g, b)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    figure: &Figure,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let notes: Vec<String> = figure.notes.iter().flat_map(|n| wrap(n, 150)).collect();
    let note_height = 16 * notes.len() as u32 + 8;
    let (upper, lower) = root.split_vertically(SIZE.1.saturating_sub(note_height));
    for (i, note) in notes.iter().enumerate() {
        lower.draw(&Text::new(
            note.clone(),
            (12, 4 + 16 * i as i32),
            ("sans-serif", 12).into_font().color(&RGBColor(70, 70, 70)),
        ))?;
    }
    let points = || figure.series.iter().flat_map(|s| s.points.iter());
    let labelled = figure.series.iter().any(|s| !s.labels.is_empty());
    // A log axis over less than about a decade would carry no labelled tick: linear then.
    let log = |axis: &Axis, v: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = v.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        });
        axis.log && hi / lo >= 20.0
    };
    let x_log = log(&figure.x, &mut points().map(|p| p.0));
    let y_log = log(&figure.y, &mut points().map(|p| p.1));
    let (x0, x1) = range(points().map(|p| p.0), x_log, labelled);
    let (y0, y1) = range(points().map(|p| p.1), y_log, false);
    match (x_log, y_log) {
        (false, false) => plot_on(&upper, figure, x0..x1, y0..y1),
        (true, false) => plot_on(&upper, figure, (x0..x1).log_scale(), y0..y1),
        (false, true) => plot_on(&upper, figure, x0..x1, (y0..y1).log_scale()),
        (true, true) => plot_on(&upper, figure, (x0..x1).log_scale(), (y0..y1).log_scale()),
    }
}

/// The chart itself, on either kind of axis.
fn plot_on<DB, X, Y>(
    area: &DrawingArea<DB, Shift>,
    figure: &Figure,
    x_range: X,
    y_range: Y,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(&figure.title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, y_range)?;
    let format = |v: &f64| tick(*v);
    chart
        .configure_mesh()
        .x_desc(figure.x.label.as_str())
        .y_desc(figure.y.label.as_str())
        .x_label_formatter(&format)
        .y_label_formatter(&format)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    // Point labels already placed (pixels), so that labels of nearby points stack instead
    // of printing over each other.
    let mut placed: Vec<(i32, i32)> = Vec::new();
    for (i, s) in figure.series.iter().enumerate() {
        let c = color(if s.color == usize::MAX { i } else { s.color });
        let pts = s.points.clone();
        let stroke = c.stroke_width(2);
        let anno = match s.mark {
            Mark::Line | Mark::LinePoints => {
                chart.draw_series(LineSeries::new(pts.clone(), stroke))?
            }
            Mark::Dashed => chart.draw_series(DashedLineSeries::new(pts.clone(), 8, 5, stroke))?,
            Mark::Points => {
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 5, c.filled())))?
            }
        };
        let dashed = s.mark == Mark::Dashed;
        anno.label(s.name.as_str()).legend(move |(lx, ly)| {
            let gap = if dashed { 5 } else { 0 };
            EmptyElement::at((lx, ly))
                + PathElement::new(vec![(0, 0), (9 - gap / 2, 0)], c.stroke_width(3))
                + PathElement::new(vec![(9 + gap / 2, 0), (18, 0)], c.stroke_width(3))
        });
        if s.mark == Mark::LinePoints {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        }
        for (p, label) in pts.iter().zip(&s.labels) {
            let (px, py) = chart.backend_coord(p);
            let mut y = py - 14;
            while placed
                .iter()
                .any(|&(qx, qy)| (qx - px).abs() < 150 && (qy - y).abs() < 13)
            {
                y += 13;
            }
            placed.push((px, y));
            area.draw(&Text::new(
                label.clone(),
                (px + 8, y),
                ("sans-serif", 11).into_font().color(&c),
            ))?;
        }
    }
    chart
        .configure_series_labels()
        .position(match figure.legend {
            Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
            Corner::UpperRight => SeriesLabelPosition::UpperRight,
            Corner::LowerRight => SeriesLabelPosition::LowerRight,
        })
        .label_font(("sans-serif", 12))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_is_indexed_when_few_colours_and_true_colour_otherwise() {
        let decode = |bytes: &[u8]| {
            let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
                .read_info()
                .unwrap();
            let mut buf = vec![0; reader.output_buffer_size()];
            let info = reader.next_frame(&mut buf).unwrap();
            (info.color_type, buf)
        };
        // Two colours: indexed, and the palette expands back to the same pixels.
        let two: Vec<u8> = (0..6)
            .flat_map(|i| {
                if i % 2 == 0 {
                    [255, 255, 255]
                } else {
                    [1, 2, 3]
                }
            })
            .collect();
        let bytes = encode_png(&two, (3, 2)).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes[..]));
        reader.set_transformations(png::Transformations::EXPAND);
        let mut reader = reader.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut buf).unwrap();
        assert_eq!(reader.info().color_type, png::ColorType::Indexed);
        assert_eq!(buf, two);
        // 300 colours: true colour, unchanged.
        let many: Vec<u8> = (0..300u32)
            .flat_map(|i| [(i % 256) as u8, (i / 256) as u8, 7])
            .collect();
        let (color, pixels) = decode(&encode_png(&many, (300, 1)).unwrap());
        assert_eq!(color, png::ColorType::Rgb);
        assert_eq!(pixels, many);
    }

    #[test]
    fn notes_wrap_at_spaces() {
        assert_eq!(wrap("ab cd ef", 5), ["ab cd", "ef"]);
        assert_eq!(wrap("abcdefgh ij", 5), ["abcdefgh", "ij"]);
        assert_eq!(wrap("", 5), [""]);
    }

    #[test]
    fn ticks_read_as_numbers() {
        assert_eq!(tick(1.0), "1");
        assert_eq!(tick(1000.0), "1000");
        assert_eq!(tick(0.25), "0.250");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(1e6), "1e6");
        assert_eq!(tick(0.0), "0");
    }

    #[test]
    fn points_that_cannot_be_drawn_are_refused() {
        if let Err(e) = font() {
            println!("skipped: {e}");
            return;
        }
        let dir = std::env::temp_dir().join(format!("skillzip-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut fig = Figure {
            stem: "bad".into(),
            title: "t".into(),
            notes: vec![],
            x: Axis::log("x"),
            y: Axis::linear("y"),
            series: vec![Series::line("s", vec![(0.0, 1.0)])],
            legend: Corner::UpperRight,
        };
        assert!(render(&fig, &dir).is_err(), "log of 0");
        fig.series[0].points = vec![(1.0, f64::NAN)];
        assert!(render(&fig, &dir).is_err(), "NaN");
        fig.series[0].points = vec![(1.0, 2.0)];
        fig.series[0].labels = vec!["a".into(), "b".into()];
        assert!(render(&fig, &dir).is_err(), "labels");
        fig.series[0].labels.clear();
        render(&fig, &dir).unwrap();
        assert!(dir.join("bad.svg").exists() && dir.join("bad.png").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
