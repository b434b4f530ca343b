"""The hooks a plugin can implement. Markers and specs only.

Every ``register_*`` hook receives a ``register`` callback and calls it once per thing it
provides, as simonw/llm does; emkit records which plugin provided what, refuses duplicate
names, and builds the objects lazily so that listing plugins imports nothing heavy.
The interfaces the registered objects follow are in ``emkit.interfaces``; docs/plugins.md
shows an example of each hook.
"""

import pluggy

hookspec = pluggy.HookspecMarker("emkit")
hookimpl = pluggy.HookimplMarker("emkit")


@hookspec
def register_trainers(register):
    """Register trainers (``emkit.interfaces.Trainer``): ``register(trainer)``.

    :param register: callback taking an object with ``name`` and
        ``train(job, on_checkpoint, progress)``; ``name`` is what ``--trainer`` selects.
    """


@hookspec
def register_generators(register):
    """Register answer generators (``emkit.interfaces.Generator``): ``register(generator)``.

    :param register: callback taking an object with ``name`` and ``generate(job, on_answer)``;
        ``name`` is what ``[evaluation] generator`` selects.
    """


@hookspec
def register_judges(register):
    """Register judge backends (``emkit.interfaces.JudgeBackend``): ``register(backend)``.

    :param register: callback taking an object with ``name`` and ``create(argument, options)``;
        a judge spec ``NAME:ARGUMENT`` (``local:/models/judge``) selects the backend ``NAME``,
        and a spec with no known prefix goes to the ``litellm`` backend.
    """


@hookspec
def register_domains(register):
    """Register training domains (``emkit.interfaces.Domain``): ``register(domain)``.

    :param register: callback taking a ``Domain``: its training file, published row count,
        evaluation question set, judge metrics and a small example dataset.
    """


@hookspec
def register_question_sets(register):
    """Register evaluation question sets (``emkit.interfaces.QuestionSetSource``): ``register(source)``.

    :param register: callback taking a ``QuestionSetSource`` (a name and a YAML or text file
        path); the file is read only when the set is used.
    """


@hookspec
def register_executors(register):
    """Register executors (``emkit.interfaces.ExecutorBackend``): ``register(backend)``.

    :param register: callback taking an object with ``name``, ``description``,
        ``create(settings, run_path)`` (an ``emkit.interfaces.Executor``), ``plan(settings,
        out_dir)``, ``jobs_now(rows)`` and ``setup_lines(settings)``; ``name`` is what
        ``[execution] executor`` (``--executor``) selects.
    """


@hookspec
def register_report_sections(register):
    """Register sections of the HTML report (``emkit.interfaces.ReportSection``): ``register(section)``.

    :param register: callback taking an object with ``name``, ``title``, ``order`` and
        ``render(tables, env)`` returning HTML (escape what you did not write).
    """


@hookspec
def register_report_writers(register):
    """Register writers of report outputs (``emkit.interfaces.ReportWriter``): ``register(writer)``.

    :param register: callback taking an object with ``name``, ``order`` and ``write(tables,
        target)``, where ``target`` (an ``emkit.interfaces.ReportTarget``) names the HTML file and,
        for one run directory, its ``exports`` and ``figures`` folders; returns the paths written.
    """


@hookspec
def register_trackers(register):
    """Register experiment trackers (``emkit.interfaces.Tracker``): ``register(tracker)``.

    :param register: callback taking an object with ``name``, ``description``,
        ``unavailable_reason()`` and ``open(options, run_path)`` (an ``emkit.interfaces.TrackerSession``);
        ``name`` is what ``[tracking] backends`` (``--track``) selects.
    """


@hookspec
def register_commands(cli):
    """Add commands to the ``emkit`` command line.

    :param cli: the root ``click.Group``; decorate functions with ``@cli.command()``.
    """
