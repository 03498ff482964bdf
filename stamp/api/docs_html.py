"""The HTML page behind ``GET /docs``: the OpenAPI document rendered on the server.

One self-contained page (inline CSS, no script, no external resource), so it works
offline, behind a strict Content-Security-Policy and in a terminal browser. A pure
function of the document: the page cannot drift from what ``/openapi.json`` says.
Everything taken from the document is escaped; descriptions understand the little
Markdown the document uses (paragraphs, ``- `` lists, inline code, bold).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

JsonObject = Mapping[str, Any]

METHODS: Final = ("get", "put", "post", "patch", "delete", "head", "options", "trace")
_SCHEMA_REF: Final = "#/components/schemas/"
_MAX_DEPTH: Final = 4
"""Nested objects are shown in place down to this depth: a recursive schema is cut, not looped."""

_CSS: Final = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#dde1e8; --bg:#fff; --soft:#f5f7fa; --code:#f0f2f6;
  --get:#1f6feb; --post:#1a7f37; --put:#9a6700; --delete:#cf222e; --patch:#8250df; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg);
  background:var(--bg); }
a { color:var(--get); text-decoration:none; } a:hover { text-decoration:underline; }
code, pre { font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
code { background:var(--code); padding:1px 4px; border-radius:4px; }
pre { background:var(--soft); border:1px solid var(--line); border-radius:6px; padding:10px 12px;
  overflow-x:auto; margin:6px 0 12px; }
pre code { background:none; padding:0; }
.layout { display:flex; align-items:flex-start; }
nav { position:sticky; top:0; flex:0 0 300px; height:100vh; overflow-y:auto; padding:20px 16px;
  border-right:1px solid var(--line); background:var(--soft); font-size:14px; }
nav h2 { font-size:12px; text-transform:uppercase; letter-spacing:.06em; color:var(--muted);
  margin:18px 0 6px; }
nav ul { list-style:none; margin:0; padding:0; } nav li { margin:3px 0; }
nav a { color:var(--fg); display:flex; gap:6px; align-items:baseline; }
nav a span:last-child { overflow-wrap:anywhere; font-size:13px; }
main { flex:1; min-width:0; max-width:1100px; padding:24px 40px 80px; }
h1 { margin:0 0 4px; font-size:28px; } h1 small { color:var(--muted); font-weight:400; font-size:16px; }
h2.group { margin:40px 0 8px; padding-bottom:6px; border-bottom:2px solid var(--line); }
.op { border:1px solid var(--line); border-radius:8px; margin:18px 0; padding:14px 18px; }
.op h3 { margin:0; font-size:18px; display:flex; gap:10px; align-items:baseline; flex-wrap:wrap; }
.op h3 .path { font:600 16px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
.op h3 .summary { font-weight:400; color:var(--muted); font-size:15px; }
h4 { margin:16px 0 6px; font-size:14px; text-transform:uppercase; letter-spacing:.05em;
  color:var(--muted); }
.method { display:inline-block; min-width:54px; text-align:center; color:#fff; border-radius:4px;
  font:700 12px/20px ui-monospace,monospace; text-transform:uppercase; padding:0 6px; }
.get { background:var(--get); } .post { background:var(--post); } .put { background:var(--put); }
.delete { background:var(--delete); } .patch { background:var(--patch); }
table { border-collapse:collapse; width:100%; margin:4px 0 10px; font-size:14px; }
th, td { text-align:left; vertical-align:top; border-bottom:1px solid var(--line); padding:5px 8px; }
th { font-size:12px; color:var(--muted); font-weight:600; }
td.name { white-space:nowrap; font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
td.name .req { color:var(--delete); margin-left:2px; }
td.type { color:var(--patch); white-space:nowrap; }
td table { margin:6px 0 0; background:var(--soft); }
.status { font-weight:700; font-family:ui-monospace,monospace; }
.s2 { color:var(--post); } .s4 { color:var(--put); } .s5 { color:var(--delete); }
.muted { color:var(--muted); } .desc p { margin:4px 0; } .desc ul { margin:4px 0; padding-left:20px; }
.media { color:var(--muted); font-size:13px; }
details > summary { cursor:pointer; color:var(--muted); font-size:13px; margin:4px 0; }
.schema { border-top:1px solid var(--line); padding-top:10px; margin-top:14px; }
.schema h3 { margin:0 0 4px; font:600 16px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
@media (max-width: 900px) { nav { display:none; } main { padding:16px; } }
"""


def render_docs(document: JsonObject) -> str:
    """The whole page for ``document`` (an OpenAPI 3.1 document as parsed JSON)."""
    return _Renderer(document).page()


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_EMPHASIS = re.compile(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])")


def _inline(text: str) -> str:
    escaped = _esc(text)
    escaped = _CODE.sub(r"<code>\1</code>", escaped)
    escaped = _BOLD.sub(r"<strong>\1</strong>", escaped)
    return _EMPHASIS.sub(r"<em>\1</em>", escaped)


def markdown(text: str | None) -> str:
    """Paragraphs and ``- `` lists (a list item continues on indented lines)."""
    if not text:
        return ""
    blocks: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.split("\n")
        if lines[0].lstrip().startswith("- "):
            items: list[str] = []
            for line in lines:
                stripped = line.strip()
                if stripped.startswith("- "):
                    items.append(stripped[2:])
                elif items:
                    items[-1] += " " + stripped
            blocks.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        else:
            blocks.append(f"<p>{_inline(' '.join(line.strip() for line in lines))}</p>")
    return f'<div class="desc">{"".join(blocks)}</div>'


def _anchor(kind: str, name: str) -> str:
    return f"{kind}-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


class _Renderer:
    def __init__(self, document: JsonObject) -> None:
        self.doc = document
        self.schemas: JsonObject = document.get("components", {}).get("schemas", {})

    # --- references -----------------------------------------------------------------

    def resolve(self, node: Any) -> Any:
        """Follow ``$ref`` (local JSON pointers) until a node without one."""
        seen: set[str] = set()
        while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if ref in seen or not ref.startswith("#/"):
                break
            seen.add(ref)
            target: Any = self.doc
            for part in ref[2:].split("/"):
                target = target.get(part.replace("~1", "/").replace("~0", "~"), {})
            # Sibling keywords of a $ref (3.1) refine it: a description, say.
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **siblings} if siblings else target
        return node

    def _schema_link(self, ref: str) -> str | None:
        if ref.startswith(_SCHEMA_REF):
            name = ref[len(_SCHEMA_REF) :]
            return f'<a href="#{_anchor("schema", name)}">{_esc(name)}</a>'
        return None

    # --- schemas --------------------------------------------------------------------

    def type_label(self, schema: Any) -> str:
        """A short HTML description of a schema's type: ``string (uuid)``, a link to
        a named schema, ``array of Attribute``, ``CertificateType | integer``."""
        if not isinstance(schema, Mapping):
            return "any"
        ref = schema.get("$ref")
        if isinstance(ref, str):
            link = self._schema_link(ref)
            if link is not None:
                return link
            return self.type_label(self.resolve(schema))
        for combinator in ("oneOf", "anyOf"):
            if combinator in schema:
                return " | ".join(self.type_label(s) for s in schema[combinator])
        if "allOf" in schema:
            return " & ".join(self.type_label(s) for s in schema["allOf"])
        if "const" in schema:
            return f"<code>{_esc(json.dumps(schema['const']))}</code>"
        types = schema.get("type")
        names = list(types) if isinstance(types, list) else [types] if types else []
        labels = []
        for name in names:
            if name == "array":
                labels.append(f"array of {self.type_label(schema.get('items'))}")
            elif name == "object" and isinstance(schema.get("additionalProperties"), Mapping):
                labels.append(f"map of {self.type_label(schema['additionalProperties'])}")
            else:
                label = _esc(name)
                if "format" in schema:
                    label += f" ({_esc(schema['format'])})"
                labels.append(label)
        return " | ".join(labels) if labels else "any"

    @staticmethod
    def constraints(schema: Any) -> list[str]:
        if not isinstance(schema, Mapping):
            return []
        out = []
        if "enum" in schema:
            out.append("one of " + ", ".join(f"<code>{_esc(json.dumps(v))}</code>" for v in schema["enum"]))
        pairs = (
            ("minimum", "≥ {}"),
            ("maximum", "≤ {}"),
            ("minLength", "at least {} character{}"),
            ("maxLength", "at most {} character{}"),
            ("minItems", "at least {} item{}"),
            ("maxItems", "at most {} item{}"),
        )
        for key, pattern in pairs:
            if key in schema:
                value = schema[key]
                out.append(_esc(pattern.format(value, "" if value == 1 else "s")))
        if "default" in schema:
            out.append(f"default <code>{_esc(json.dumps(schema['default']))}</code>")
        if "contentEncoding" in schema:
            out.append(_esc(schema["contentEncoding"]))
        return out

    def properties(self, schema: Any) -> tuple[dict[str, Any], set[str]]:
        """Properties and required names of an object schema, ``allOf`` parts merged."""
        schema = self.resolve(schema)
        props: dict[str, Any] = {}
        required: set[str] = set()
        if not isinstance(schema, Mapping):
            return props, required
        for part in schema.get("allOf", ()):
            more, needed = self.properties(part)
            for name, sub in more.items():
                props[name] = {**props[name], **sub} if name in props else sub
            required |= needed
        for name, sub in schema.get("properties", {}).items():
            props[name] = {**props[name], **sub} if name in props else sub
        required |= set(schema.get("required", ()))
        return props, required

    def _nested_object(self, schema: Any) -> Any:
        """The object schema to show nested under a field: the field's own object, or
        the items of its array, when they have properties (named ones too, so a reader
        sees a request whole; the type column still links to the named schema)."""
        resolved = self.resolve(schema)
        if not isinstance(resolved, Mapping):
            return None
        if "properties" in resolved or "allOf" in resolved:
            return schema
        items = self.resolve(resolved.get("items"))
        if isinstance(items, Mapping) and ("properties" in items or "allOf" in items):
            return resolved.get("items")
        return None

    def schema_table(self, schema: Any, depth: int = 0) -> str:
        props, required = self.properties(schema)
        if not props:
            resolved = self.resolve(schema)
            label = self.type_label(schema)
            desc = resolved.get("description") if isinstance(resolved, Mapping) else None
            summary = ", ".join(self.constraints(resolved))
            return f'<p><span class="muted">{label}</span> {summary}</p>{markdown(desc)}'
        rows = []
        for name, sub in props.items():
            resolved = self.resolve(sub)
            description = sub.get("description") or (
                resolved.get("description") if isinstance(resolved, Mapping) else None
            )
            notes = self.constraints(resolved)
            cell = markdown(description) + (f'<div class="muted">{"; ".join(notes)}</div>' if notes else "")
            nested = self._nested_object(sub)
            if nested is not None and depth < _MAX_DEPTH:
                cell += self.schema_table(nested, depth + 1)
            mark = '<span class="req" title="required">*</span>' if name in required else ""
            rows.append(
                f'<tr><td class="name">{_esc(name)}{mark}</td>'
                f'<td class="type">{self.type_label(sub)}</td><td>{cell}</td></tr>'
            )
        return "<table><tr><th>Field</th><th>Type</th><th>Description</th></tr>" + "".join(rows) + "</table>"

    # --- operations -----------------------------------------------------------------

    def operations(self) -> Iterator[tuple[str, str, JsonObject]]:
        for path, item in self.doc.get("paths", {}).items():
            for method in METHODS:
                if method in item:
                    yield path, method, item[method]

    @staticmethod
    def op_anchor(path: str, method: str, operation: JsonObject) -> str:
        return _anchor("op", str(operation.get("operationId") or f"{method}-{path}"))

    def examples(self, media: JsonObject) -> str:
        found: list[tuple[str, Any]] = []
        if "example" in media:
            found.append(("Example", media["example"]))
        for name, example in media.get("examples", {}).items():
            example = self.resolve(example)
            found.append((example.get("summary") or name, example.get("value")))
        out = []
        for title, value in found:
            text = value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False)
            code = f"<pre><code>{_esc(text)}</code></pre>"
            out.append(f"<details open><summary>{_esc(title)}</summary>{code}</details>")
        return "".join(out)

    def content(self, content: JsonObject) -> str:
        out = []
        for media_type, media in content.items():
            out.append(f'<div class="media">{_esc(media_type)}</div>')
            if "schema" in media:
                out.append(self.schema_table(media["schema"]))
            out.append(self.examples(media))
        return "".join(out)

    def parameters(self, operation: JsonObject, item: JsonObject) -> str:
        params = [self.resolve(p) for p in [*item.get("parameters", ()), *operation.get("parameters", ())]]
        if not params:
            return ""
        rows = []
        for p in params:
            mark = '<span class="req" title="required">*</span>' if p.get("required") else ""
            notes = self.constraints(self.resolve(p.get("schema")))
            cell = markdown(p.get("description")) + (
                f'<div class="muted">{"; ".join(notes)}</div>' if notes else ""
            )
            rows.append(
                f'<tr><td class="name">{_esc(p.get("name"))}{mark}</td><td>{_esc(p.get("in"))}</td>'
                f'<td class="type">{self.type_label(p.get("schema"))}</td><td>{cell}</td></tr>'
            )
        return (
            "<h4>Parameters</h4><table><tr><th>Name</th><th>In</th><th>Type</th><th>Description</th></tr>"
            + "".join(rows)
            + "</table>"
        )

    def responses(self, operation: JsonObject) -> str:
        rows = []
        for status, response in operation.get("responses", {}).items():
            response = self.resolve(response)
            klass = f"s{str(status)[0]}"
            headers = response.get("headers", {})
            header_text = ""
            if headers:
                named = ", ".join(f"<code>{_esc(h)}</code>" for h in headers)
                header_text = f'<div class="muted">Headers: {named}</div>'
            body = self.content(response.get("content", {}))
            if body and not str(status).startswith("2"):
                # Error bodies share a few shapes: folded, so the successes stand out.
                body = f"<details><summary>body</summary>{body}</details>"
            rows.append(
                f'<tr><td class="status {klass}">{_esc(status)}</td>'
                f"<td>{markdown(response.get('description'))}{header_text}{body}</td></tr>"
            )
        return "<h4>Responses</h4><table>" + "".join(rows) + "</table>"

    def operation(self, path: str, method: str, operation: JsonObject) -> str:
        item = self.doc["paths"][path]
        parts = [
            f'<section class="op" id="{self.op_anchor(path, method, operation)}">',
            f'<h3><span class="method {method}">{method}</span><span class="path">{_esc(path)}</span>'
            f'<span class="summary">{_inline(operation.get("summary", ""))}</span></h3>',
            markdown(operation.get("description")),
            self.parameters(operation, item),
        ]
        body = self.resolve(operation.get("requestBody"))
        if isinstance(body, Mapping) and body:
            required = " (required)" if body.get("required") else ""
            parts.append(f"<h4>Request body{required}</h4>{markdown(body.get('description'))}")
            parts.append(self.content(body.get("content", {})))
        parts.append(self.responses(operation))
        parts.append("</section>")
        return "".join(parts)

    # --- page -----------------------------------------------------------------------

    def groups(self) -> list[tuple[str, str, list[tuple[str, str, JsonObject]]]]:
        """Operations by their first tag, in the order of the document's tags."""
        described = {t["name"]: t.get("description", "") for t in self.doc.get("tags", ())}
        grouped: dict[str, list[tuple[str, str, JsonObject]]] = {name: [] for name in described}
        for path, method, operation in self.operations():
            tag = (operation.get("tags") or ["Other"])[0]
            grouped.setdefault(tag, []).append((path, method, operation))
        return [(tag, described.get(tag, ""), ops) for tag, ops in grouped.items() if ops]

    def page(self) -> str:
        info = self.doc.get("info", {})
        title = info.get("title", "API")
        groups = self.groups()
        nav = []
        sections = []
        for tag, description, ops in groups:
            links = "".join(
                f'<li><a href="#{self.op_anchor(p, m, o)}"><span class="method {m}">{m}</span>'
                f"<span>{_esc(p)}</span></a></li>"
                for p, m, o in ops
            )
            nav.append(f"<h2>{_esc(tag)}</h2><ul>{links}</ul>")
            body = "".join(self.operation(p, m, o) for p, m, o in ops)
            sections.append(
                f'<h2 class="group" id="{_anchor("tag", tag)}">{_esc(tag)}</h2>{markdown(description)}{body}'
            )
        schema_links = "".join(
            f'<li><a href="#{_anchor("schema", name)}">{_esc(name)}</a></li>' for name in self.schemas
        )
        nav.append(f"<h2>Schemas</h2><ul>{schema_links}</ul>")
        schemas = "".join(
            f'<div class="schema" id="{_anchor("schema", name)}"><h3>{_esc(name)}</h3>'
            f"{self.schema_table(schema)}</div>"
            for name, schema in self.schemas.items()
        )
        servers = "".join(
            f"<li><code>{_esc(s.get('url'))}</code> {_inline(s.get('description', ''))}</li>"
            for s in self.doc.get("servers", ())
        )
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)} API</title><style>{_CSS}</style></head><body>"
            '<div class="layout">'
            f'<nav><a href="#top"><strong>{_esc(title)}</strong> API {_esc(info.get("version", ""))}</a>'
            f"{''.join(nav)}</nav>"
            f'<main id="top"><h1>{_esc(title)} <small>API version {_esc(info.get("version", ""))}'
            f" · OpenAPI {_esc(self.doc.get('openapi', ''))}</small></h1>"
            f"<p>{_inline(info.get('summary', ''))} "
            'The machine-readable document: <a href="openapi.json"><code>openapi.json</code></a>.</p>'
            f"{markdown(info.get('description'))}"
            f"<h4>Servers</h4><ul>{servers}</ul>"
            f"{''.join(sections)}"
            f'<h2 class="group" id="schemas">Schemas</h2>{schemas}'
            "</main></div></body></html>\n"
        )
