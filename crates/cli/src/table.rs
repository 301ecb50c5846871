//! A plain-text table: columns padded to their widest cell, cells optionally coloured
//! with ANSI codes that do not count towards the width.

/// An ANSI colour for a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Colour {
    Green,
    Yellow,
    Red,
    Dim,
}

impl Colour {
    fn code(self) -> &'static str {
        match self {
            Colour::Green => "32",
            Colour::Yellow => "33",
            Colour::Red => "31",
            Colour::Dim => "2",
        }
    }
}

/// One cell: its text and colour.
#[derive(Clone, Debug)]
pub(crate) struct Cell {
    text: String,
    colour: Option<Colour>,
}

impl Cell {
    pub(crate) fn coloured(text: impl Into<String>, colour: Colour) -> Self {
        Self {
            text: text.into(),
            colour: Some(colour),
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Self { text, colour: None }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Self::from(text.to_owned())
    }
}

/// Rows under a header.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<Cell>>,
    colours: bool,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            colours: false,
        }
    }

    /// Renders colours (else they are dropped).
    pub(crate) fn with_colours(mut self, on: bool) -> Self {
        self.colours = on;
        self
    }

    pub(crate) fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.text.chars().count())
                .chain(std::iter::once(self.header[i].chars().count()))
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let mut out = String::new();
        let line = |out: &mut String, cells: &[Cell]| {
            let mut text = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = widths[i].saturating_sub(c.text.chars().count());
                match (self.colours, c.colour) {
                    (true, Some(colour)) => {
                        text.push_str(&format!("\x1b[{}m{}\x1b[0m", colour.code(), c.text));
                    }
                    _ => text.push_str(&c.text),
                }
                if i + 1 < cells.len() {
                    text.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        let header: Vec<Cell> = self.header.iter().map(|h| Cell::from(h.as_str())).collect();
        line(&mut out, &header);
        for r in &self.rows {
            line(&mut out, r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_colours_do_not_count() {
        let mut t = Table::new(&["a", "bb"]).with_colours(true);
        t.row(vec![Cell::coloured("long", Colour::Red), "x".into()]);
        t.row(vec!["s".into(), "y".into()]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "a     bb");
        assert_eq!(lines[1], "\x1b[31mlong\x1b[0m  x");
        assert_eq!(lines[2], "s     y");
    }
}
