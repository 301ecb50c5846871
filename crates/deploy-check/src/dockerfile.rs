//! A Dockerfile as a list of stages, each with its base and its instructions (line
//! continuations joined, comments dropped): enough to check targets, ports, users and
//! healthchecks without a Docker engine.

/// One `FROM … AS name` stage.
#[derive(Clone, Debug)]
pub struct Stage {
    /// The `AS` name (empty for an unnamed stage).
    pub name: String,
    /// The image or stage it starts from, as written (`${RUNTIME_IMAGE}`, `runtime`).
    pub from: String,
    /// Its instructions after `FROM`: (keyword in upper case, the rest of the line).
    pub instructions: Vec<(String, String)>,
}

impl Stage {
    /// The arguments of every instruction `keyword` of this stage.
    pub fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A parsed Dockerfile.
#[derive(Clone, Debug, Default)]
pub struct Dockerfile {
    /// `ARG name[=default]` before the first `FROM`: (name, default).
    pub global_args: Vec<(String, Option<String>)>,
    /// The stages in order.
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    /// Parses the text of a Dockerfile.
    pub fn parse(text: &str) -> Dockerfile {
        let mut out = Dockerfile::default();
        let mut logical = String::new();
        let mut lines = Vec::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('#') || (t.is_empty() && logical.is_empty()) {
                continue;
            }
            if let Some(cont) = t.strip_suffix('\\') {
                logical.push_str(cont);
                logical.push(' ');
                continue;
            }
            logical.push_str(t);
            lines.push(std::mem::take(&mut logical));
        }
        for line in lines {
            let (kw, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let kw = kw.to_ascii_uppercase();
            let rest = rest.trim().to_owned();
            if kw == "FROM" {
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let name = match parts.as_slice() {
                    [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => (*name).to_owned(),
                    _ => String::new(),
                };
                out.stages.push(Stage {
                    name,
                    from: parts.first().copied().unwrap_or_default().to_owned(),
                    instructions: Vec::new(),
                });
            } else if let Some(stage) = out.stages.last_mut() {
                stage.instructions.push((kw, rest));
            } else if kw == "ARG" {
                let (n, d) = match rest.split_once('=') {
                    Some((n, d)) => (n.to_owned(), Some(d.to_owned())),
                    None => (rest.clone(), None),
                };
                out.global_args.push((n, d));
            }
        }
        out
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The position of the stage named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// The instruction `keyword` in force for stage `name`: its own, else inherited from
    /// the stage it is built `FROM` (ENV, USER, HEALTHCHECK, ENTRYPOINT, EXPOSE, …).
    pub fn effective(&self, name: &str, keyword: &str) -> Vec<String> {
        let Some(stage) = self.stage(name) else {
            return Vec::new();
        };
        let mut inherited = if self.stage(&stage.from).is_some() {
            self.effective(&stage.from, keyword)
        } else {
            Vec::new()
        };
        inherited.extend(stage.all(keyword).into_iter().map(str::to_owned));
        inherited
    }
}
