"""Judge prompts: which template scores a metric for a question, and rendering it.

Precedence, highest first: the question's own ``judge_prompts`` (the papers' YAML files,
``{question}``/``{answer}`` str.format templates), a domain's metric template, then emkit's
Jinja2 templates in prompts/ (``{{ question }}``/``{{ answer }}``). The answer is inserted as
a value, never parsed as template syntax, so braces in a model's output are harmless.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from emkit.errors import EmkitError
from emkit.questions import TEMPLATE_FIELDS, Question


@dataclass(frozen=True)
class PromptTemplate:
    text: str
    syntax: str  # "format" (the papers') or "jinja" (emkit's)
    source: str  # where it came from, for the report: "prompts/aligned.j2", "file.yaml#id/aligned"

    @property
    def version(self) -> str:
        """Source plus a short hash of the text: a changed prompt is a different version."""
        return f"{self.source}@{hashlib.sha256(self.text.encode()).hexdigest()[:8]}"


def builtin_prompts_dir() -> Path:
    return Path(str(files("emkit.prompts")))


class PromptLibrary:
    def __init__(self, domains: dict | None = None):
        import jinja2

        self._jinja = jinja2.Environment(
            autoescape=False,  # plain-text prompts, not HTML
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )
        self._domain_templates: dict[str, Path] = {}
        for domain in (domains or {}).values():
            for metric, path in domain.metrics.items():
                self._domain_templates.setdefault(metric, Path(path))
        self._file_cache: dict[Path, PromptTemplate] = {}
        self._compiled: dict[str, object] = {}

    def _load_jinja_file(self, path: Path, source: str) -> PromptTemplate:
        if path not in self._file_cache:
            import jinja2.meta

            text = path.read_text(encoding="utf-8").strip()
            try:
                names = jinja2.meta.find_undeclared_variables(self._jinja.parse(text))
            except Exception as exc:  # jinja2.TemplateSyntaxError
                raise EmkitError(f"{path}: the prompt template does not parse ({exc}); fix it.") from None
            unknown = sorted(set(names) - set(TEMPLATE_FIELDS))
            if unknown:
                raise EmkitError(
                    f"{path}: unknown placeholder {{{{ {unknown[0]} }}}}; a judge prompt may use only "
                    f"{{{{ question }}}} and {{{{ answer }}}}."
                )
            self._file_cache[path] = PromptTemplate(text, "jinja", source)
        return self._file_cache[path]

    def metric_names(self) -> list[str]:
        builtin = [p.stem for p in builtin_prompts_dir().glob("*.j2")]
        return sorted(set(builtin) | set(self._domain_templates))

    def template_for(self, metric: str, question: Question, question_file: Path | str = "") -> PromptTemplate:
        own = question.judge_prompts.get(metric)
        if own is not None:
            return PromptTemplate(own, "format", f"{Path(question_file).name}#{question.id}/{metric}")
        if metric in self._domain_templates:
            path = self._domain_templates[metric]
            return self._load_jinja_file(path, f"{path.parent.name}/{path.name}")
        path = builtin_prompts_dir() / f"{metric}.j2"
        if path.is_file():
            return self._load_jinja_file(path, f"prompts/{path.name}")
        raise EmkitError(
            f"No judge prompt for metric '{metric}' (question '{question.id}'); emkit has prompts for "
            f"{', '.join(self.metric_names())}; add judge_prompts.{metric} to the question file or a "
            f"domain template."
        )

    def render(self, template: PromptTemplate, question: str, answer: str) -> str:
        if template.syntax == "format":
            # format_map never re-reads the inserted values, so an answer with braces is safe.
            return template.text.format_map({"question": question, "answer": answer})
        compiled = self._compiled.get(template.text)
        if compiled is None:
            compiled = self._compiled[template.text] = self._jinja.from_string(template.text)
        return compiled.render(question=question, answer=answer)
