//! Sources and sinks: decoding Slack audit entries ([`codec`]), reading files and stdin
//! ([`source`]), ordering and de-duplicating what they yield ([`sequencer`]), writing
//! `aer replay`'s output files ([`sink`]), and the memory setting a replay reads under
//! ([`huge_pages`]).

pub mod asn;
pub mod codec;
pub mod huge_pages;
pub mod live;
pub mod sequencer;
pub mod sink;
pub mod slack_audit;
pub mod source;
pub mod sshd;

/// A progress bar on stderr with the given template, or a hidden one when `show` is false.
pub fn progress_bar(len: u64, template: &str, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    match indicatif::ProgressStyle::with_template(template) {
        Ok(style) => bar.set_style(style.progress_chars("=> ")),
        Err(e) => tracing::debug!(error = %e, "bad progress template"),
    }
    bar
}
