//! Rendering PostCreateHook templates into Kubernetes objects, the way KubeFlex does it:
//! each template object is written out as text, the text is executed as a Go
//! `text/template` (through `gtmpl`) with the hook's variables as the data map, and the
//! result is read back as one object.
//!
//! Where hostplane differs from KubeFlex, on purpose:
//! - The text is YAML, not JSON. In JSON every `"` inside a string is escaped, so a KubeFlex
//!   template cannot hold a string literal (`{{ .x | printf "%s-y" }}` fails to parse); YAML
//!   writes such strings single-quoted or as block scalars, which keep `"` as it is.
//! - A variable that no layer sets is an error ([`RenderError::MissingVariable`]) when its
//!   absence would show in the output. Go's default (`missingkey=default`, KubeFlex's) prints
//!   `<no value>`, giving names like `demo-<no value>` that the API server then refuses with
//!   a message hiding the cause. Uses that tolerate absence — `default`, `if`, `with`, `and`, `or` — treat
//!   a missing variable as empty, as Go does, and render.
//! - A variable whose value holds a line break is refused when a template uses it
//!   ([`RenderError::MultilineVariable`]): values are pasted into YAML text, and a line
//!   break is how a value would add fields of its own to the object. (KubeFlex's JSON text
//!   cannot carry one either.)
//! - `default` is available, with Sprig's meaning (KubeFlex has no functions beyond Go's).
//!
//! Every variable is a string, so a rendered variable always yields a string value: a
//! template field that must be a number or a boolean is written literally.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{self, AssertUnwindSafe};

use gtmpl::error::ExecError;
use gtmpl::{Context, FuncError, Template};
use hostplane_crds::{ControlPlane, PostCreateHook};
use serde_json::Value;

/// Built-in variable: the tenant's namespace on the host, `<cp>-system`.
pub const NAMESPACE_VAR: &str = "Namespace";
/// Built-in variable: the ControlPlane's name.
pub const CONTROL_PLANE_NAME_VAR: &str = "ControlPlaneName";
/// Built-in variable: the name of the hook being rendered.
pub const HOOK_NAME_VAR: &str = "HookName";

/// Variables whose values never appear in error messages (they end up in status and Events).
const SECRET_VARS: &[&str] = &[crate::BOOTSTRAP_TOKEN_VAR];

/// Kinds that are cluster-scoped on every Kubernetes cluster, as (API group, kind). Objects
/// of any other kind are taken to be namespaced by [`place_in_namespace`]: rendering is pure
/// and has no discovery client, so a cluster-scoped kind missing here (say, one from a CRD)
/// gets a namespace too; a caller with discovery should prefer its answer.
const CLUSTER_SCOPED_KINDS: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "PersistentVolume"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("storage.k8s.io", "StorageClass"),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    ("apiregistration.k8s.io", "APIService"),
];

/// One hook a ControlPlane asks for, with the variables it gives that hook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookUse {
    pub hook_name: String,
    pub vars: BTreeMap<String, String>,
}

/// Why a hook's templates could not be turned into objects. `hook` is the PostCreateHook's
/// name and `index` the position of the template in `spec.templates`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("hook {hook}, template {index}: {message}")]
    Template {
        hook: String,
        index: usize,
        message: String,
    },
    #[error(
        "hook {hook}, template {index}: variable {name} is not set (no default, global or per-hook value)"
    )]
    MissingVariable {
        hook: String,
        index: usize,
        name: String,
    },
    #[error(
        "hook {hook}, template {index}: variable {name} holds a line break, which would change the structure of the object"
    )]
    MultilineVariable {
        hook: String,
        index: usize,
        name: String,
    },
    #[error("hook {hook}, template {index}: the rendered text is not YAML: {message}")]
    NotYaml {
        hook: String,
        index: usize,
        message: String,
    },
    #[error("hook {hook}, template {index}: the rendered text is not an object")]
    NotAnObject { hook: String, index: usize },
    #[error("hook {hook}, template {index}: the rendered object has no {field}")]
    MissingField {
        hook: String,
        index: usize,
        field: &'static str,
    },
    #[error("hook {hook}: variable {name}={value:?} {reason}")]
    InvalidVariable {
        hook: String,
        name: String,
        value: String,
        reason: String,
    },
}

impl RenderError {
    /// A stable name for the failure, fit for an Event reason or a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Template { .. } => "HookTemplateInvalid",
            Self::MissingVariable { .. } => "HookVariableMissing",
            Self::MultilineVariable { .. } => "HookVariableMultiline",
            Self::NotYaml { .. } => "HookRenderedNotYaml",
            Self::NotAnObject { .. } => "HookRenderedNotAnObject",
            Self::MissingField { .. } => "HookRenderedFieldMissing",
            Self::InvalidVariable { .. } => "HookVariableInvalid",
        }
    }
}

/// The hooks `cp` asks for, in order: the single-hook form (`postCreateHook` with
/// `postCreateHookVars`) first, then `postCreateHooks`. Entries without a name are skipped
/// and a name seen before is skipped, keeping its first use (KubeFlex's order and rules).
pub fn hook_uses(cp: &ControlPlane) -> Vec<HookUse> {
    let single = cp.spec.post_create_hook.as_ref().map(|name| HookUse {
        hook_name: name.clone(),
        vars: cp.spec.post_create_hook_vars.clone(),
    });
    let listed = cp.spec.post_create_hooks.iter().filter_map(|hook_use| {
        hook_use.hook_name.as_ref().map(|name| HookUse {
            hook_name: name.clone(),
            vars: hook_use.vars.clone(),
        })
    });
    let mut seen = HashSet::new();
    single
        .into_iter()
        .chain(listed)
        .filter(|hook_use| !hook_use.hook_name.is_empty())
        .filter(|hook_use| seen.insert(hook_use.hook_name.clone()))
        .collect()
}

/// The variables one hook is rendered with. Later layers win: the hook's `defaultVars`,
/// then the ControlPlane's `globalVars`, then the vars of this use of the hook, then the
/// built-ins `Namespace` (`namespace`, the tenant's `<cp>-system`), `ControlPlaneName` and
/// `HookName`. A caller adds further built-ins (such as the node-join ones of
/// [`crate::KUBEVIRT_NODES`]) to the result, where they override everything as well.
pub fn variables(
    hook: &PostCreateHook,
    hook_use: &HookUse,
    cp_name: &str,
    global_vars: &BTreeMap<String, String>,
    namespace: &str,
) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = hook
        .spec
        .default_vars
        .iter()
        .map(|var| (var.name.clone(), var.value.clone()))
        .collect();
    vars.extend(global_vars.clone());
    vars.extend(hook_use.vars.clone());
    vars.insert(NAMESPACE_VAR.to_owned(), namespace.to_owned());
    vars.insert(CONTROL_PLANE_NAME_VAR.to_owned(), cp_name.to_owned());
    vars.insert(HOOK_NAME_VAR.to_owned(), hook_use.hook_name.clone());
    vars
}

/// Renders every template of `hook` with `vars`, in order, into objects that each have
/// `apiVersion`, `kind` and `metadata.name`. Namespaces are left as rendered: see
/// [`place_in_namespace`].
pub fn render_hook(
    hook: &PostCreateHook,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<Value>, RenderError> {
    let hook_name = hook.metadata.name.as_deref().unwrap_or_default();
    hook.spec
        .templates
        .iter()
        .enumerate()
        .map(|(index, template)| render_template(hook_name, index, template, vars))
        .collect()
}

/// Whether objects of this kind are cluster-scoped, by the well-known list (see
/// [`place_in_namespace`]).
pub fn is_cluster_scoped(api_version: &str, kind: &str) -> bool {
    let group = api_version
        .rsplit_once('/')
        .map_or("", |(group, _version)| group);
    CLUSTER_SCOPED_KINDS.contains(&(group, kind))
}

/// Puts a rendered object into `namespace` (the tenant's `<cp>-system`) unless it names a
/// namespace itself or is of a well-known cluster-scoped kind: Namespace, PersistentVolume,
/// ClusterRole, ClusterRoleBinding, CustomResourceDefinition, PriorityClass, StorageClass,
/// Validating- and MutatingWebhookConfiguration, APIService. Any other kind counts as
/// namespaced.
pub fn place_in_namespace(object: &mut Value, namespace: &str) {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    if is_cluster_scoped(api_version, kind) {
        return;
    }
    let Some(metadata) = object
        .get_mut("metadata")
        .and_then(|metadata| metadata.as_object_mut())
    else {
        return;
    };
    let named = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .is_some_and(|existing| !existing.is_empty());
    if !named {
        metadata.insert("namespace".to_owned(), Value::from(namespace));
    }
}

fn render_template(
    hook: &str,
    index: usize,
    template: &Value,
    vars: &BTreeMap<String, String>,
) -> Result<Value, RenderError> {
    let source = serde_yaml::to_string(template).map_err(|e| RenderError::Template {
        hook: hook.to_owned(),
        index,
        message: format!("cannot be written as YAML: {e}"),
    })?;
    let text = render_text(&format!("{hook}[{index}]"), &source, vars)
        .map_err(|failure| failure.into_error(hook, index, vars))?;
    let object: Value = serde_yaml::from_str(&text).map_err(|e| RenderError::NotYaml {
        hook: hook.to_owned(),
        index,
        message: redact(&e.to_string(), vars),
    })?;
    if !object.is_object() {
        return Err(RenderError::NotAnObject {
            hook: hook.to_owned(),
            index,
        });
    }
    for (field, value) in [
        ("apiVersion", &object["apiVersion"]),
        ("kind", &object["kind"]),
        ("metadata.name", &object["metadata"]["name"]),
    ] {
        if value.as_str().is_none_or(str::is_empty) {
            return Err(RenderError::MissingField {
                hook: hook.to_owned(),
                index,
                field,
            });
        }
    }
    Ok(object)
}

/// How rendering one template's text failed, before it is tied to a hook and index.
#[derive(Debug, PartialEq)]
enum TextFailure {
    Template(String),
    Missing(String),
    Multiline(String),
}

impl TextFailure {
    fn into_error(self, hook: &str, index: usize, vars: &BTreeMap<String, String>) -> RenderError {
        let hook = hook.to_owned();
        match self {
            Self::Template(message) => RenderError::Template {
                hook,
                index,
                message: redact(&message, vars),
            },
            Self::Missing(name) => RenderError::MissingVariable { hook, index, name },
            Self::Multiline(name) => RenderError::MultilineVariable { hook, index, name },
        }
    }
}

/// Executes `source` as a Go template with `vars` as its data, once it is known to be
/// safe to hand to gtmpl.
fn render_text(
    name: &str,
    source: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, TextFailure> {
    check_actions(source).map_err(TextFailure::Template)?;
    // gtmpl 0.7 panics on some inputs (string literals with a backslash before a multi-byte
    // character, for one): a bad hook must fail alone, not take the reconciler down.
    panic::catch_unwind(AssertUnwindSafe(|| execute(name, source, vars))).unwrap_or_else(|_| {
        Err(TextFailure::Template(
            "the template engine failed on this template".to_owned(),
        ))
    })
}

/// Executes `source` as a Go template with `vars` as its data.
///
/// The data is handed to gtmpl as an *object*, not a map: a field an object lacks is an
/// error naming the field (`NoFiledFor`), where a map would quietly yield `<no value>`.
/// Each name reported that way is a variable nobody set; it is added as "no value" and the
/// template run again, until it completes. Then, for each such variable, one more run with
/// it set to "" tells whether its absence shows: if that output differs, the template
/// printed or compared it and rendering fails; if not, it was only tested or defaulted.
/// A template whose variables are all set runs once.
fn execute(
    name: &str,
    source: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, TextFailure> {
    let mut template = Template::with_name(name);
    template.add_func("default", default);
    template
        .parse(source)
        .map_err(|e| TextFailure::Template(e.to_string()))?;

    // Variables holding a line break are left out of the data: a template using one then
    // names it, as it would an unset one.
    let mut multiline = HashSet::new();
    let mut data = HashMap::new();
    for (var, value) in vars {
        if value.contains(['\n', '\r']) {
            multiline.insert(var.as_str());
        } else {
            data.insert(var.clone(), gtmpl::Value::from(value.as_str()));
        }
    }
    // One run: the data object lacking a field is told apart from every other outcome.
    let run = |data: &HashMap<String, gtmpl::Value>| -> Result<Result<String, String>, String> {
        match template.render(&Context::from(gtmpl::Value::Object(data.clone()))) {
            Err(ExecError::NoFiledFor(field, _)) if !data.contains_key(&field) => Err(field),
            outcome => Ok(outcome.map_err(|e| e.to_string())),
        }
    };

    let mut missing = Vec::new();
    let outcome = loop {
        match run(&data) {
            Ok(outcome) => break outcome,
            Err(field) if multiline.contains(field.as_str()) => {
                return Err(TextFailure::Multiline(field));
            }
            Err(field) => {
                data.insert(field.clone(), gtmpl::Value::NoValue);
                missing.push(field);
            }
        }
    };
    for field in missing {
        let mut as_empty = data.clone();
        as_empty.insert(field.clone(), gtmpl::Value::from(""));
        if run(&as_empty) != Ok(outcome.clone()) {
            return Err(TextFailure::Missing(field));
        }
    }
    outcome.map_err(TextFailure::Template)
}

/// Refuses two kinds of text gtmpl 0.7 cannot be trusted with, before it sees them:
/// - An action (`{{ ... }}`) that is never closed. gtmpl's lexer loops forever when an
///   action runs into the end of the text after whitespace (`{{ .x `): its `backup` steps
///   back a character even at the end of input. Inside a closed action the lexer always has
///   a character ahead, so checking that every action closes — outside string, raw-string
///   and character literals, which may contain `}}` — keeps it out of that loop.
/// - `define`, `template` and `block`: a template that calls itself recurses until the
///   stack overflows, which aborts the whole process. A hook template is one object, with
///   no use for named templates (KubeFlex's hooks have none).
fn check_actions(source: &str) -> Result<(), String> {
    let mut rest = source;
    while let Some(open) = rest.find("{{") {
        rest = &rest[open + 2..];
        let line = source[..source.len() - rest.len()].lines().count();
        let body = rest.strip_prefix("- ").unwrap_or(rest);
        if let Some(comment) = body.strip_prefix("/*") {
            let end = comment
                .find("*/")
                .ok_or_else(|| format!("unclosed comment on line {line}"))?;
            rest = &comment[end + 2..];
            continue;
        }
        let keyword = body
            .trim_start()
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or_default();
        if ["define", "template", "block"].contains(&keyword) {
            return Err(format!(
                "line {line}: {keyword} is not supported in hook templates"
            ));
        }
        rest = skip_action(rest).ok_or_else(|| {
            format!("the action opened on line {line} has no closing }}}} (outside quotes)")
        })?;
    }
    Ok(())
}

/// The text after the `}}` that closes the action `body` starts, if one does. A quote
/// opens a string or character literal wherever gtmpl's lexer would see one — including
/// the closing `'` of a YAML single-quoted scalar, so one unclosed action may be reported
/// for a string that merely looks unterminated.
fn skip_action(body: &str) -> Option<&str> {
    let mut chars = body.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '}' if body[at..].starts_with("}}") => return Some(&body[at + 2..]),
            '"' | '\'' => {
                let mut escaped = false;
                loop {
                    match chars.next()? {
                        (_, '\n') => return None,
                        // gtmpl's rule, not Go's: a backslash always escapes what follows
                        // it, even a backslash ("\\" does not end a string there either).
                        (_, '\\') => escaped = true,
                        (_, inner) if inner == c && !escaped => break,
                        _ => escaped = false,
                    }
                }
            }
            '`' => while chars.next()?.1 != '`' {},
            _ => {}
        }
    }
    None
}

/// Sprig's `default`: `default FALLBACK VALUE` (or `VALUE | default FALLBACK`) is VALUE
/// unless it is empty — unset, "", false, 0 or an empty collection — and FALLBACK then.
fn default(args: &[gtmpl::Value]) -> Result<gtmpl::Value, FuncError> {
    match args {
        [fallback] => Ok(fallback.clone()),
        [fallback, value] if is_empty(value) => Ok(fallback.clone()),
        [_, value] => Ok(value.clone()),
        _ => Err(FuncError::Generic(format!(
            "default takes a fallback and a value, not {} arguments",
            args.len()
        ))),
    }
}

fn is_empty(value: &gtmpl::Value) -> bool {
    match value {
        gtmpl::Value::NoValue | gtmpl::Value::Nil => true,
        gtmpl::Value::Bool(b) => !b,
        gtmpl::Value::String(s) => s.is_empty(),
        gtmpl::Value::Array(items) => items.is_empty(),
        gtmpl::Value::Object(fields) | gtmpl::Value::Map(fields) => fields.is_empty(),
        gtmpl::Value::Number(n) => {
            n.as_u64() == Some(0) || n.as_i64() == Some(0) || n.as_f64() == Some(0.0)
        }
        gtmpl::Value::Function(_) => false,
    }
}

/// gtmpl's execution errors may quote the values they choked on; keep secrets out of the
/// messages that reach status and Events.
fn redact(message: &str, vars: &BTreeMap<String, String>) -> String {
    SECRET_VARS
        .iter()
        .filter_map(|name| vars.get(*name).map(|value| (*name, value)))
        .filter(|(_, value)| !value.is_empty())
        .fold(message.to_owned(), |message, (name, value)| {
            message.replace(value.as_str(), &format!("<{name}>"))
        })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use hostplane_crds::{ControlPlaneSpec, PostCreateHookSpec, PostCreateHookUse, Var};
    use serde_json::json;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn hook(name: &str, templates: Vec<Value>, defaults: &[(&str, &str)]) -> PostCreateHook {
        PostCreateHook::new(
            name,
            PostCreateHookSpec {
                templates,
                default_vars: defaults
                    .iter()
                    .map(|(name, value)| Var {
                        name: name.to_string(),
                        value: value.to_string(),
                    })
                    .collect(),
                timeout_seconds: None,
            },
        )
    }

    fn config_map(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": data})
    }

    fn render_one(template: Value, vars: &BTreeMap<String, String>) -> Result<Value, RenderError> {
        let mut objects = render_hook(&hook("h", vec![template], &[]), vars)?;
        assert_eq!(objects.len(), 1);
        Ok(objects.remove(0))
    }

    fn use_of(name: &str, pairs: &[(&str, &str)]) -> HookUse {
        HookUse {
            hook_name: name.to_owned(),
            vars: vars(pairs),
        }
    }

    #[test]
    fn hook_uses_put_the_single_hook_first_then_the_list_without_unnamed_or_repeated_entries() {
        let listed = |name: Option<&str>, pairs: &[(&str, &str)]| PostCreateHookUse {
            hook_name: name.map(str::to_owned),
            vars: vars(pairs),
        };
        let cp = ControlPlane::new(
            "cp1",
            ControlPlaneSpec {
                post_create_hook: Some("a".to_owned()),
                post_create_hook_vars: vars(&[("from", "single")]),
                post_create_hooks: vec![
                    listed(Some("b"), &[("from", "b-first")]),
                    listed(None, &[("from", "unnamed")]),
                    listed(Some("a"), &[("from", "a-listed")]),
                    listed(Some("c"), &[]),
                    listed(Some("b"), &[("from", "b-second")]),
                    listed(Some(""), &[("from", "empty")]),
                ],
                ..Default::default()
            },
        );
        assert_eq!(
            hook_uses(&cp),
            vec![
                use_of("a", &[("from", "single")]),
                use_of("b", &[("from", "b-first")]),
                use_of("c", &[]),
            ]
        );
    }

    #[test]
    fn hook_uses_of_a_control_plane_without_hooks_are_empty() {
        let cp = ControlPlane::new("cp1", ControlPlaneSpec::default());
        assert_eq!(hook_uses(&cp), vec![]);
    }

    #[test]
    fn variables_layer_defaults_globals_per_hook_vars_and_builtins() {
        let hook = hook(
            "h",
            vec![],
            &[
                ("only_default", "default"),
                ("global_over_default", "default"),
                ("use_over_global", "default"),
                ("Namespace", "default"),
            ],
        );
        let globals = vars(&[
            ("global_over_default", "global"),
            ("use_over_global", "global"),
            ("only_global", "global"),
            ("ControlPlaneName", "global"),
        ]);
        let hook_use = use_of(
            "h",
            &[
                ("use_over_global", "use"),
                ("only_use", "use"),
                ("HookName", "use"),
                ("Namespace", "use"),
            ],
        );
        assert_eq!(
            variables(&hook, &hook_use, "cp1", &globals, "cp1-system"),
            vars(&[
                ("only_default", "default"),
                ("global_over_default", "global"),
                ("use_over_global", "use"),
                ("only_global", "global"),
                ("only_use", "use"),
                ("Namespace", "cp1-system"),
                ("ControlPlaneName", "cp1"),
                ("HookName", "h"),
            ])
        );
    }

    #[test]
    fn kubeflex_demo_hook_renders_its_job_in_the_tenant_namespace() {
        let demo: PostCreateHook =
            serde_yaml::from_str(include_str!("../../examples/demo-hook.yaml")).unwrap();
        let hook_use = use_of("demo-hook", &[]);
        let vars = variables(&demo, &hook_use, "cp1", &BTreeMap::new(), "cp1-system");
        assert_eq!(
            vars,
            self::vars(&[
                ("MESSAGE", "hello"),
                ("Namespace", "cp1-system"),
                ("ControlPlaneName", "cp1"),
                ("HookName", "demo-hook"),
            ])
        );
        let mut objects = render_hook(&demo, &vars).unwrap();
        let job = json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "demo-job-cp1"},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [{
                            "name": "demo",
                            "image": "public.ecr.aws/docker/library/busybox:1.36",
                            "command": ["sleep", "15"]
                        }],
                        "restartPolicy": "Never"
                    }
                },
                "backoffLimit": 1
            }
        });
        assert_eq!(objects, vec![job.clone()]);

        place_in_namespace(&mut objects[0], "cp1-system");
        let mut placed = job;
        placed["metadata"]["namespace"] = json!("cp1-system");
        assert_eq!(objects, vec![placed]);
    }

    #[test]
    fn pipelines_functions_and_default_follow_go_and_sprig() {
        let template = config_map(json!({
            "printf": "{{ .x | printf \"%s-y\" }}",
            "defaultPiped": "{{ .unset | default \"v\" }}",
            "defaultCalled": "{{ default \"v\" .unset }}",
            "defaultOfSet": "{{ .x | default \"v\" }}",
            "defaultOfEmpty": "{{ .empty | default \"v\" }}",
            "ifElse": "{{ if .unset }}yes{{ else }}no{{ end }}",
            "with": "{{ with .x }}got {{ . }}{{ end }}",
            "eq": "{{ if eq .x \"a\" }}match{{ end }}",
            "trim": "<{{- .x -}}>",
            "builtin": "{{ .HookName }}/{{.ControlPlaneName}}",
            "literal": "no actions here",
        }));
        let rendered = render_one(
            template,
            &vars(&[
                ("x", "a"),
                ("empty", ""),
                ("HookName", "h"),
                ("ControlPlaneName", "cp1"),
            ]),
        )
        .unwrap();
        assert_eq!(
            rendered,
            config_map(json!({
                "printf": "a-y",
                "defaultPiped": "v",
                "defaultCalled": "v",
                "defaultOfSet": "a",
                "defaultOfEmpty": "v",
                "ifElse": "no",
                "with": "got a",
                "eq": "match",
                "trim": "<a>",
                "builtin": "h/cp1",
                "literal": "no actions here",
            }))
        );
    }

    #[test]
    fn variable_values_render_as_strings_even_when_they_look_like_numbers() {
        let rendered = render_one(
            config_map(json!({"count": "{{.n}}", "flag": "{{.b}}"})),
            &vars(&[("n", "3"), ("b", "true")]),
        )
        .unwrap();
        assert_eq!(rendered, config_map(json!({"count": "3", "flag": "true"})));
    }

    #[test]
    fn a_missing_variable_that_would_print_is_an_error_naming_it() {
        let template = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo-{{.absent}}"}});
        assert_eq!(
            render_one(template, &vars(&[("x", "a")])),
            Err(RenderError::MissingVariable {
                hook: "h".to_owned(),
                index: 0,
                name: "absent".to_owned(),
            })
        );
    }

    #[test]
    fn a_missing_variable_given_to_a_function_is_an_error_naming_it() {
        let template = config_map(json!({"k": "{{ printf \"%s-y\" .absent }}"}));
        assert_eq!(
            render_one(template, &vars(&[])),
            Err(RenderError::MissingVariable {
                hook: "h".to_owned(),
                index: 0,
                name: "absent".to_owned(),
            })
        );
    }

    #[test]
    fn only_the_missing_variable_whose_absence_shows_is_reported() {
        let template = config_map(json!({"k": "{{ .guarded | default \"x\" }}-{{ .printed }}"}));
        assert_eq!(
            render_one(template, &vars(&[])),
            Err(RenderError::MissingVariable {
                hook: "h".to_owned(),
                index: 0,
                name: "printed".to_owned(),
            })
        );
    }

    #[test]
    fn missing_variables_guarded_by_default_if_or_with_render_as_empty() {
        let template = config_map(json!({
            "default": "{{ .a | default \"x\" }}",
            "if": "[{{ if .b }}{{ .b }}{{ end }}]",
            "with": "[{{ with .c }}{{ . }}{{ end }}]",
            "or": "{{ or .d \"fallback\" }}",
        }));
        assert_eq!(
            render_one(template, &vars(&[])).unwrap(),
            config_map(json!({"default": "x", "if": "[]", "with": "[]", "or": "fallback"}))
        );
    }

    #[test]
    fn a_used_variable_with_a_line_break_is_refused_and_an_unused_one_ignored() {
        let template = config_map(json!({"k": "{{ .one_line }} {{ .cert }}"}));
        let vars = vars(&[("one_line", "a"), ("cert", "line1\nline2")]);
        assert_eq!(
            render_one(template, &vars),
            Err(RenderError::MultilineVariable {
                hook: "h".to_owned(),
                index: 0,
                name: "cert".to_owned(),
            })
        );
        let template = config_map(json!({"k": "{{ .one_line }}"}));
        assert_eq!(
            render_one(template, &vars).unwrap(),
            config_map(json!({"k": "a"}))
        );
    }

    #[test]
    fn a_malformed_template_is_reported_with_its_hook_and_index() {
        let good = config_map(json!({"k": "{{ .x }}"}));
        for (bad, expected) in [
            ("{{ .x ", "the action opened on line"),
            ("{{ .x }} {{ \"}}\" ", "the action opened on line"),
            ("{{ \"unterminated }}", "the action opened on line"),
            ("{{/* no end", "unclosed comment"),
            ("{{ end }}", "template: h[1]:"),
            ("{{ nosuchfunction .x }}", "template: h[1]:"),
        ] {
            let hook = hook("h", vec![good.clone(), config_map(json!({"k": bad}))], &[]);
            match render_hook(&hook, &vars(&[("x", "a")])) {
                Err(RenderError::Template {
                    hook,
                    index: 1,
                    message,
                }) if hook == "h" && message.starts_with(expected) => {}
                other => panic!(
                    "{bad:?}: expected a template error starting {expected:?}, got {other:?}"
                ),
            }
        }
    }

    #[test]
    fn unclosed_actions_that_hang_gtmpls_lexer_fail_fast() {
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            for bad in ["{{ .x ", "{{ .x\n\n", "{{ .x }}\n{{ \"}}\" \n", "{{- .x\t"] {
                let result = render_one(config_map(json!({"k": bad})), &vars(&[("x", "a")]));
                done.send((bad, result)).unwrap();
            }
        });
        for _ in 0..4 {
            let (bad, result) = finished
                .recv_timeout(Duration::from_secs(20))
                .expect("rendering an unclosed action must not hang");
            assert!(
                matches!(result, Err(RenderError::Template { .. })),
                "{bad:?}: {result:?}"
            );
        }
    }

    #[test]
    fn templates_that_crash_gtmpl_are_template_errors() {
        for bad in [
            // Recursion without end: gtmpl would overflow the stack and abort the process.
            "{{ define \"a\" }}{{ template \"a\" }}{{ end }}{{ template \"a\" }}",
            // gtmpl 0.7 panics unquoting this string literal.
            "{{ printf \"%s\" \"\\é\" }}",
        ] {
            let result = render_one(config_map(json!({"k": bad})), &vars(&[]));
            assert!(
                matches!(result, Err(RenderError::Template { ref hook, index: 0, .. }) if hook == "h"),
                "{bad:?}: {result:?}"
            );
        }
    }

    #[test]
    fn rendered_text_that_is_not_yaml_is_reported() {
        let template =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo-{{.x}}"}});
        assert!(matches!(
            render_one(template, &vars(&[("x", "a: b")])),
            Err(RenderError::NotYaml { ref hook, index: 0, .. }) if hook == "h"
        ));
    }

    #[test]
    fn a_template_that_does_not_render_to_an_object_is_refused() {
        let not_an_object = RenderError::NotAnObject {
            hook: "h".to_owned(),
            index: 0,
        };
        assert_eq!(
            render_one(json!("{{ .x }}"), &vars(&[("x", "a")])),
            Err(not_an_object.clone())
        );
        // The condition spans a key and a value, so the whole mapping renders away.
        assert_eq!(
            render_one(json!({"x{{ if false }}": "{{ end }}"}), &vars(&[])),
            Err(not_an_object)
        );
    }

    #[test]
    fn a_rendered_object_needs_api_version_kind_and_name() {
        let missing = |field| RenderError::MissingField {
            hook: "h".to_owned(),
            index: 0,
            field,
        };
        let empty = vars(&[("empty", "")]);
        assert_eq!(
            render_one(
                json!({"kind": "ConfigMap", "metadata": {"name": "a"}}),
                &empty
            ),
            Err(missing("apiVersion"))
        );
        assert_eq!(
            render_one(
                json!({"apiVersion": "v1", "metadata": {"name": "a"}}),
                &empty
            ),
            Err(missing("kind"))
        );
        assert_eq!(
            render_one(json!({"apiVersion": "v1", "kind": "ConfigMap"}), &empty),
            Err(missing("metadata.name"))
        );
        assert_eq!(
            render_one(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{{ .empty }}"}}),
                &empty
            ),
            Err(missing("metadata.name"))
        );
    }

    #[test]
    fn secrets_are_kept_out_of_error_messages() {
        let token = "abcdef.0123456789abcdef";
        let result = render_one(
            config_map(json!({"k": "{{ range .BootstrapToken }}{{ end }}"})),
            &vars(&[("BootstrapToken", token)]),
        );
        let Err(RenderError::Template { message, .. }) = result else {
            panic!("expected a template error, got {result:?}");
        };
        assert!(
            !message.contains(token) && message.contains("<BootstrapToken>"),
            "{message}"
        );
    }

    #[test]
    fn namespaced_objects_go_to_the_tenant_namespace_and_cluster_scoped_ones_stay_put() {
        let mut objects = vec![
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "elsewhere"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": ""}}),
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "vm"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "cr"}}),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "crd"}}),
            json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "svc"}}),
            // Same kind name, other group: not the well-known cluster-scoped kind.
            json!({"apiVersion": "example.com/v1", "kind": "ClusterRole", "metadata": {"name": "x"}}),
        ];
        for object in &mut objects {
            place_in_namespace(object, "cp1-system");
        }
        assert_eq!(
            objects,
            vec![
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "cp1-system"}}),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "elsewhere"}}),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "cp1-system"}}),
                json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "vm", "namespace": "cp1-system"}}),
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}),
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "cr"}}),
                json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "crd"}}),
                json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "svc"}}),
                json!({"apiVersion": "example.com/v1", "kind": "ClusterRole", "metadata": {"name": "x", "namespace": "cp1-system"}}),
            ]
        );
    }

    #[test]
    fn long_values_survive_the_yaml_round_trip() {
        let long = "x".repeat(300);
        let template = config_map(json!({
            "k": format!("{{{{ .a }}}} {long} {{{{ .a | printf \"%s-%s\" .a }}}} {long}")
        }));
        assert_eq!(
            render_one(template, &vars(&[("a", "v")])).unwrap(),
            config_map(json!({"k": format!("v {long} v-v {long}")}))
        );
    }
}
