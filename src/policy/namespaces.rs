//! `[namespaces]`: whether portd may widen the range inside other network
//! namespaces, and which ones (docs/DESIGN.md, "Other network namespaces").
//! Nothing is selected by default: every other namespace is advised only.
//! A selector is `KIND:PATTERN`, the pattern exact or a glob (`*` any run of
//! characters, `?` one); the matching is a pure function of the names a
//! namespace has ([`Names`]), so a new kind of name is one more arm.

use std::fmt;

use serde::{Serialize, Serializer};

use super::Mode;

/// The policy for the other network namespaces.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NamespacePolicy {
    /// `advise` (the default): never written. `auto`: the selected ones
    /// are widened under the host's `[widen]` bounds and rules.
    pub mode: Mode,
    /// Which namespaces `auto` widens; none by default.
    pub select: Vec<Selector>,
}

impl Default for NamespacePolicy {
    fn default() -> Self {
        NamespacePolicy {
            mode: Mode::Advise,
            select: Vec::new(),
        }
    }
}

impl NamespacePolicy {
    /// The first selector that matches `names`, when `auto` may write there.
    pub fn widens(&self, names: &Names) -> Option<&Selector> {
        if self.mode != Mode::Auto {
            return None;
        }
        self.select.iter().find(|s| s.matches(names))
    }
}

/// What a selector matches against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorKind {
    /// A name under `/run/netns` (`ip netns add NAME`).
    Netns,
    /// A Kubernetes pod, `NAMESPACE/NAME`.
    Pod,
    /// The Kubernetes namespace of a pod.
    PodNamespace,
    /// A container: its name, its id (full or as `docker ps` shows it) or
    /// `RUNTIME:SHORT-ID`.
    Container,
}

impl SelectorKind {
    pub const ALL: [SelectorKind; 4] = [
        SelectorKind::Netns,
        SelectorKind::Pod,
        SelectorKind::PodNamespace,
        SelectorKind::Container,
    ];

    pub fn keyword(self) -> &'static str {
        match self {
            SelectorKind::Netns => "netns",
            SelectorKind::Pod => "pod",
            SelectorKind::PodNamespace => "pod_namespace",
            SelectorKind::Container => "container",
        }
    }
}

/// The names of one namespace, as its identity gives them.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub netns: Vec<String>,
    /// `NAMESPACE/NAME`.
    pub pod: Option<String>,
    pub pod_namespace: Option<String>,
    /// Every name the container goes by.
    pub container: Vec<String>,
}

/// One `KIND:PATTERN` of `namespaces.select`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub kind: SelectorKind,
    pub pattern: String,
}

impl Selector {
    /// `netns:blue`, `pod:shop/checkout-*`: what `namespaces.select` takes.
    pub const EXPECTING: &'static str = r#""KIND:PATTERN" with KIND one of netns, pod, pod_namespace, container, such as "netns:blue" or "pod:shop/checkout-*""#;

    pub fn parse(text: &str) -> Result<Selector, String> {
        let kinds: Vec<&str> = SelectorKind::ALL.iter().map(|k| k.keyword()).collect();
        let Some((kind, pattern)) = text.split_once(':') else {
            return Err(format!(
                "no KIND: before the pattern; write \"KIND:PATTERN\" with KIND one of {}",
                kinds.join(", ")
            ));
        };
        let kind = SelectorKind::ALL
            .into_iter()
            .find(|k| k.keyword() == kind)
            .ok_or_else(|| {
                format!(
                    "unknown kind {kind:?}; use one of {} (\"netns:blue\")",
                    kinds.join(", ")
                )
            })?;
        // Patterns go into log lines: printable characters, no space.
        if pattern.is_empty() || !pattern.chars().all(|c| c.is_ascii_graphic()) {
            return Err(
                "the pattern is empty or holds a space or a character other than printable ASCII; \
                 use the name, or a glob with * and ?"
                    .to_string(),
            );
        }
        Ok(Selector {
            kind,
            pattern: pattern.to_string(),
        })
    }

    pub fn matches(&self, names: &Names) -> bool {
        let one = |name: &Option<String>| name.as_deref().is_some_and(|n| glob(&self.pattern, n));
        let any = |list: &[String]| list.iter().any(|n| glob(&self.pattern, n));
        match self.kind {
            SelectorKind::Netns => any(&names.netns),
            SelectorKind::Pod => one(&names.pod),
            SelectorKind::PodNamespace => one(&names.pod_namespace),
            SelectorKind::Container => any(&names.container),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.keyword(), self.pattern)
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `*` matches any run of characters (`/` too), `?` one character; the
/// rest matches itself. Iterative, with one backtrack point: linear in
/// practice, never exponential.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        let own = |list: &[&str]| list.iter().map(ToString::to_string).collect();
        Names {
            netns: own(&["blue"]),
            pod: Some("shop/checkout-7f9c".into()),
            pod_namespace: Some("shop".into()),
            container: own(&["envoy", "containerd:0123456789ab"]),
        }
    }

    fn sel(text: &str) -> Selector {
        Selector::parse(text).unwrap()
    }

    #[test]
    fn globs_match_exactly_or_with_stars_and_question_marks() {
        assert!(glob("blue", "blue"));
        assert!(!glob("blue", "blue2"));
        assert!(glob("blue*", "blue2"));
        assert!(glob("*", ""));
        assert!(glob("shop/checkout-*", "shop/checkout-7f9c"));
        assert!(glob("b?ue", "blue"));
        assert!(!glob("b?ue", "bue"));
        assert!(glob("*a*b*", "xxaxxbxx"));
        assert!(!glob("*a*b", "xxaxxbxc"));
    }

    #[test]
    fn each_kind_matches_only_its_own_names() {
        let n = names();
        assert!(sel("netns:blue").matches(&n));
        assert!(!sel("netns:shop").matches(&n));
        assert!(sel("pod:shop/checkout-*").matches(&n));
        assert!(!sel("pod:checkout-*").matches(&n));
        assert!(sel("pod_namespace:shop").matches(&n));
        assert!(sel("container:envoy").matches(&n));
        assert!(sel("container:containerd:0123*").matches(&n));
        assert!(!sel("container:blue").matches(&n));
        assert!(!sel("pod:*").matches(&Names::default()));
    }

    #[test]
    fn nothing_is_widened_by_default_nor_in_advise_mode() {
        let n = names();
        assert_eq!(NamespacePolicy::default().widens(&n), None);
        let advise = NamespacePolicy {
            mode: Mode::Advise,
            select: vec![sel("netns:*")],
        };
        assert_eq!(advise.widens(&n), None);
        let auto = NamespacePolicy {
            mode: Mode::Auto,
            ..advise
        };
        assert_eq!(auto.widens(&n), Some(&sel("netns:*")));
    }

    #[test]
    fn a_selector_names_what_is_wrong_with_it() {
        assert!(Selector::parse("blue").unwrap_err().contains("no KIND:"));
        assert!(
            Selector::parse("host:blue")
                .unwrap_err()
                .contains("unknown kind \"host\"")
        );
        assert!(Selector::parse("netns:").unwrap_err().contains("empty"));
        assert!(Selector::parse("netns:a b").unwrap_err().contains("space"));
        assert_eq!(sel("pod_namespace:shop").to_string(), "pod_namespace:shop");
    }
}
