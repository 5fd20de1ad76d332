//! The compiling instance's settings.

/// Settings of the compiling instance.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// The service cluster this proxy serves (`""`: the default cluster). Services of other
    /// clusters are ignored entirely, errors included.
    pub cluster: String,
    /// Pool capacity of newly created endpoints.
    pub max_idle_per_endpoint: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            cluster: String::new(),
            max_idle_per_endpoint: crate::config::settings::ProxySettings::default()
                .pool_max_idle_per_endpoint,
        }
    }
}
