//! HTML pages, rendered from templates compiled into the binary (autoescaped).

use minijinja::Environment;
use serde::Serialize;

/// The template set.
#[derive(Debug)]
pub struct Pages {
    env: Environment<'static>,
}

impl Pages {
    /// Loads the embedded templates.
    pub fn new() -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        env.add_template("base.html", include_str!("../templates/base.html"))?;
        env.add_template("home.html", include_str!("../templates/home.html"))?;
        env.add_template("login.html", include_str!("../templates/login.html"))?;
        env.add_template("private.html", include_str!("../templates/private.html"))?;
        Ok(Pages { env })
    }

    /// Renders one page.
    pub fn render<S: Serialize>(&self, name: &str, ctx: S) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(ctx)
    }
}
