"""The confusion log: the plan's "5-minute rule" as a tool, for every week.

When a concept stops you, look it up for five minutes; if it is still unclear, mark it here and
move on. Once a week, spend an hour on what you marked (`review`), and write down what answered
each question and the page or command in this repository that shows it (`resolve`).

    python -m curriculum.confusions add "What does the Q-Former do?" --week 2 --found "BLIP-2 §3: a bridge?"
    python -m curriculum.confusions list [--week 2] [--all] [--json]
    python -m curriculum.confusions resolve 7 --answer "..." --see docs/week07.md#what-the-q-former-is-for
    python -m curriculum.confusions review [--since 7]      # the weekly hour: what you marked, and where to look

The log is yours, a plain file to commit: notes/confusions.jsonl at the repository root (--log
for another). It is JSON Lines, one event a line ({"event": "add", ...} or {"event": "resolve",
...}), only ever appended to, so two commands at the same moment both land and git diffs stay
readable; what `list` shows is those events replayed in order. A new log starts with the plan's
own confusion points, answered, to show the pattern. `list` of a log not yet started shows those.
`make report` shows the log in your lab notebook.

--see takes a file of this repository (docs/week03.md, with #anchor for a heading), a command
(`python -m stage1_demos.sd_generate attention`, `make week3`) or a web address; the first two
are checked.
"""

import contextlib
import json
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

from curriculum import REPO_ROOT, cli, docs

try:
    import fcntl  # numbering new entries under a lock (POSIX); the append itself is atomic anyway
except ImportError:  # pragma: no cover (Windows)
    fcntl = None

DEFAULT_LOG = REPO_ROOT / "notes" / "confusions.jsonl"
WEEKS = range(1, 13)

# The plan's own confusion points (its 记录困惑点 lines, and the 需求来源 of stage 2's modules), with
# the pages and commands of this repository that answer them. A new log starts with these, resolved.
PLAN = (
    {
        "week": 1,
        "question": "Why does CLIP need an image encoder and a text encoder?",
        "plan": "记录困惑点（如为什么需要image_encoder和text_encoder？）",
        "answer": "Pixels and words are different signals, so each gets its own tower; trained together, a "
        "matching pair lands close in one shared vector space. Because the towers never look at each other, "
        "a gallery is embedded once and a query costs one encoder pass plus a dot product.",
        "see": ["docs/week01.md", "stage1_demos/clip_retrieval.py", "python -m stage1_demos.clip_retrieval search"],
    },
    {
        "week": 2,
        "question": "What does the Q-Former do?",
        "plan": "记录困惑点（如Q-Former的作用是什么？）",
        "answer": "A few learned query tokens cross-attend to the frozen image encoder's patch features and come "
        "out as a fixed, small number of vectors, which one linear layer maps into the language model's input "
        "space: a bridge that compresses the image into what text describes.",
        "see": [
            "docs/week07.md#what-the-q-former-is-for",
            "docs/reading-guides.md#blip-2-3",
            "python -m stage2_fundamentals.qformer_lab compare",
        ],
    },
    {
        "week": 3,
        "question": "How does the cross-attention in the UNet work?",
        "plan": "记录困惑点（如UNet结构中的Cross-Attention层如何工作？）",
        "answer": "In every UNet transformer block the latent pixels are the queries and the prompt's token "
        "embeddings the keys and values: softmax(QK^T/sqrt(d)) says, for each pixel, how much it reads each word.",
        "see": ["docs/week03.md", "python -m stage1_demos.sd_generate attention", "docs/week04.md"],
    },
    {
        "week": 2,
        "question": "BLIP-2 writes fluent text: how does the decoder generate it?",
        "plan": "需求来源：在BLIP-2项目中发现模型能生成连贯文本，但不理解生成逻辑",
        "answer": "A decoder-only Transformer predicts the next token from all the tokens before it (causal "
        "attention); decoding repeats that step, picking each token greedily, by sampling (temperature, "
        "top-k, top-p) or by beam search, with a KV cache so old tokens are not recomputed.",
        "see": [
            "docs/week04.md",
            "docs/week05.md",
            "docs/reading-guides.md#attention-is-all-you-need-3",
            "python -m stage2_fundamentals.decoding_lab sweep",
        ],
    },
    {
        "week": 1,
        "question": "Why does one similarity score work across modalities?",
        "plan": "需求来源：CLIP项目中不理解为什么相似度计算能跨模态工作",
        "answer": "The contrastive loss (InfoNCE) trains both towers so that each caption's vector is closer to "
        "its own image's than to every other image in the batch, and the reverse: cross-entropy over scaled "
        "cosine similarities, the negatives in the denominator.",
        "see": [
            "docs/week06.md",
            "docs/reading-guides.md#clip-23-the-loss-figure-3-and-31-zero-shot",
            "python -m stage2_fundamentals.infonce_lab negatives",
        ],
    },
    {
        "week": 3,
        "question": "Why does changing num_inference_steps change the picture?",
        "plan": "需求来源：在Stable Diffusion中调整num_inference_steps时发现效果波动",
        "answer": "The sampler visits a subset of the training timesteps; fewer steps mean larger jumps along "
        "the reverse process, and each scheduler (DDPM, DDIM with its eta, DPMSolver) takes those jumps "
        "differently, so the same seed lands on a different image.",
        "see": [
            "docs/week08.md",
            "docs/reading-guides.md#ddpm-3-algorithms-1-and-2",
            "python -m stage2_fundamentals.diffusion_lab compare",
        ],
    },
)

SEE_HELP = (
    "a file of this repository (docs/week03.md, with #anchor for a heading), a command "
    "(`python -m stage1_demos.sd_generate attention`, `make week3`) or a web address"
)


# ---------------------------------------------------------------- references: pages and commands
def reference_problem(ref):
    """Why `ref` points at nothing in this repository, or None when it does (a URL is taken as it is)."""
    ref = ref.strip()
    if re.match(r"https?://\S+$", ref):
        return None
    words = ref.split()
    if words[:2] == ["python", "-m"] and len(words) > 2:
        module = words[2]
        file = REPO_ROOT.joinpath(*module.split(".")).with_suffix(".py")
        if not re.fullmatch(r"[\w.]+", module) or not file.is_file():
            return f"no module {module} in this repository"
        sub = words[3] if len(words) > 3 and not words[3].startswith("-") else None
        if sub and not re.search(rf"add_parser\(\s*[\"']{re.escape(sub)}[\"']", file.read_text(encoding="utf-8")):
            return f"{module} has no subcommand {sub!r}"
        return None
    if words[:1] == ["make"] and len(words) == 2:
        targets = re.findall(r"^([\w%.-]+):", (REPO_ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.M)
        if not any(re.fullmatch(re.escape(t).replace("%", ".+"), words[1]) for t in targets):
            return f"the Makefile has no target {words[1]!r}"
        return None
    path, _, fragment = ref.partition("#")
    target = (REPO_ROOT / path).resolve()
    if not path or len(words) != 1 or REPO_ROOT not in target.parents or not target.exists():
        return f"{ref!r} is no file of this repository"
    if fragment and (target.suffix != ".md" or fragment not in docs.anchors(target)):
        return f"{path} has no heading whose anchor is #{fragment}"
    return None


# ---------------------------------------------------------------- the log: events, and their fold
def now():
    return datetime.now().astimezone().isoformat(timespec="seconds")


def when(text, where):
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise cli.UserError(f"{where}: 'at' is not a date and time like 2025-01-31T09:00:00+08:00") from None
    return moment if moment.tzinfo else moment.astimezone()


def is_text(value):
    return isinstance(value, str) and value.strip() != ""


def fold(log):
    """The entries of a log, by id: its events replayed in order. A line that is not a known event,
    an entry added twice or resolved twice, is one clear error naming the line."""
    log = Path(log)
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise cli.UserError(f"{log} is not UTF-8 text: save it as UTF-8") from None
    except OSError as e:
        raise cli.UserError(f"{log} cannot be read ({e.strerror})") from None
    events = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                events.append((number, json.loads(line)))
            except ValueError as e:
                raise cli.UserError(f"{log}:{number} is not JSON ({e.msg}): mend or remove that line") from None
    return replay(events, log)


def replay(events, source):
    """The entries that (line number, event) pairs of `source` make, by id."""
    entries = {}
    for number, event in events:
        where = f"{source}:{number}"
        kind = event.get("event") if isinstance(event, dict) else None
        ident = event.get("id") if isinstance(event, dict) else None
        if kind not in ("add", "resolve"):
            raise cli.UserError(f"{where}: unknown event {kind!r} (a line is an 'add' or a 'resolve' event)")
        if not isinstance(ident, int) or isinstance(ident, bool) or ident < 1:
            raise cli.UserError(f"{where}: the {kind} event has no id (a whole number from 1)")
        at = when(event["at"], where).isoformat() if "at" in event else None
        if kind == "add":
            if ident in entries:
                raise cli.UserError(f"{where} adds #{ident} again (line {entries[ident]['line']} added it)")
            week = event.get("week")
            if not isinstance(week, int) or isinstance(week, bool) or week not in WEEKS:
                raise cli.UserError(f"{where}: #{ident} has no week from 1 to 12")
            if not is_text(event.get("question")):
                raise cli.UserError(f"{where}: #{ident} has no question")
            entries[ident] = {
                "id": ident,
                "week": week,
                "question": event["question"],
                "found": event.get("found") or "",
                "source": "plan" if event.get("source") == "plan" else "you",
                "plan": event.get("plan") or "",
                "added": at,
                "status": "open",
                "answer": "",
                "see": [],
                "resolved": None,
                "line": number,
            }
        else:
            entry = entries.get(ident)
            if entry is None:
                raise cli.UserError(f"{where} resolves #{ident}, which no line above adds")
            if entry["status"] == "resolved":
                raise cli.UserError(f"{where} resolves #{ident} again (it was resolved before)")
            see = event.get("see", [])
            if not is_text(event.get("answer")) or not isinstance(see, list) or not all(map(is_text, see)):
                raise cli.UserError(f"{where}: the resolve of #{ident} needs an answer and a list of pages ('see')")
            entry.update(status="resolved", answer=event["answer"], see=see, resolved=at)
    return entries


def plan_events(at=None):
    """The plan's questions with their answers, as the events a new log starts with (`at`: when)."""
    stamp = {"at": at} if at else {}
    events = []
    for ident, item in enumerate(PLAN, 1):
        events.append(
            {
                "event": "add",
                "id": ident,
                "week": item["week"],
                "question": item["question"],
                "source": "plan",
                "plan": item["plan"],
                **stamp,
            }
        )
        events.append({"event": "resolve", "id": ident, "answer": item["answer"], "see": item["see"], **stamp})
    return events


def plan_entries():
    """What a new log starts with (`list` of a log not yet started shows these)."""
    return replay(enumerate(plan_events(), 1), "the plan's questions")


@contextlib.contextmanager
def locked_append(log):
    """(entries, size, append): the log read under an exclusive lock (numbers are given out one at a
    time), and a function that appends events to it, opened with O_APPEND and written with one
    os.write, so its lines land whole after every other line even beside a writer without the lock."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise cli.UserError(f"{log} cannot be written ({e.strerror})") from None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        entries = fold(log) if size else {}

        def append(events):
            data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events).encode("utf-8")
            if size and not log.read_bytes().endswith(b"\n"):  # a hand edit left no newline at the end
                data = b"\n" + data
            if os.write(fd, data) != len(data):
                raise cli.UserError(f"{log}: the disk took only part of the line (is it full?); mend its last line")

        yield entries, size, append
    finally:
        os.close(fd)  # releases the lock


def add(log, question, week, found=None):
    """Mark a question; returns (its id, whether the log was started now, with the plan's questions)."""
    with locked_append(log) as (entries, size, append):
        events = [] if size else plan_events(now())
        ident = max([*entries, *(e["id"] for e in events)], default=0) + 1
        event = {"event": "add", "id": ident, "week": week, "question": question.strip(), "at": now()}
        if found and found.strip():
            event["found"] = found.strip()
        append([*events, event])
    return ident, not size


def resolve(log, ident, answer, see):
    log = Path(log)
    if not log.is_file():
        raise cli.UserError(f"no confusion log at {log} yet: mark a question first with `add`")
    problems = [f"--see {ref}: {reference_problem(ref)}" for ref in see if reference_problem(ref)]
    if problems:
        raise cli.UserError(f"{problems[0]} (give {SEE_HELP})")
    answer, see = answer.strip(), [ref.strip() for ref in see]
    with locked_append(log) as (entries, _, append):
        entry = entries.get(ident)
        if entry is None:
            known = ", ".join(f"#{i}" for i, e in entries.items() if e["status"] == "open") or "none"
            raise cli.UserError(f"no question #{ident} in {log} (open ones: {known}; `list` shows them)")
        if entry["status"] == "resolved":
            raise cli.UserError(f"#{ident} is already resolved ({entry['answer'][:60]}...): `list --all` shows it")
        append([{"event": "resolve", "id": ident, "answer": answer, "see": see, "at": now()}])
    return {**entry, "status": "resolved", "answer": answer, "see": see}


def load(log):
    """(entries, exists): a missing log is the plan's questions a new log would start with."""
    log = Path(log)
    if not log.exists():
        return plan_entries(), False
    if not log.is_file():
        raise cli.UserError(f"{log} is not a file")
    return fold(log), True


# ---------------------------------------------------------------- review: what in the repository answers it
STOP = set(
    "a an and are as at be but by can do does doing done for from how i if in into is it its me my "
    "need needs not of on one or so than that the their them then there these this to two use used "
    "uses using was what when where which while who why will with work works would you your".split()
)
STOP_ZH = {
    "什么",
    "为什",
    "是什",
    "怎么",
    "如何",
    "为何",
    "需要",
    "记录",
    "困惑",
    "惑点",
    "需求",
    "求来",
    "来源",
    "不理",
    "理解",
}


def key_words(text):
    """Lower-case words (hyphenated ones also split), plural s dropped, common words left out; runs of
    Chinese characters as pairs of characters."""
    words = set()
    for word in re.findall(r"[a-z0-9]+(?:[-_][a-z0-9]+)*", text.lower()):
        for part in {word, *re.split(r"[-_]", word)}:
            if len(part) > 1 and part not in STOP:
                words.add(singular(part))
    for run in re.findall(r"[\u4e00-\u9fff]+", text):
        words |= {run[i : i + 2] for i in range(max(1, len(run) - 1))} - STOP_ZH
    return words


def singular(word):
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def headings():
    """(reference with #anchor, heading text) for every heading of docs/*.md."""
    found = []
    for page in sorted(docs.DOCS_DIR.glob("*.md")):
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
        for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE):
            found.append((f"docs/{page.name}#{docs.anchor(heading)}", heading.strip()))
    return found


def ranked(keys, items, limit):
    """The items (reference, text) sharing the most key words with `keys`, at least one, best first."""
    scored = [(len(keys & key_words(text)), i, ref, text) for i, (ref, text) in enumerate(items)]
    return [(ref, text) for score, _, ref, text in sorted(scored, key=lambda s: (-s[0], s[1])) if score][:limit]


def suggestions(entry, entries):
    """Where to look: resolved questions that share its words (their answer's pages), docs headings
    that share them, and the lines of its week's page that share the most."""
    keys = key_words(entry["question"])
    done = [(e, f"{e['question']} {e['plan']} {e['answer']}") for e in entries.values() if e["status"] == "resolved"]
    similar = ranked(keys, [(e["id"], text) for e, text in done], 3)
    page = docs.DOCS_DIR / f"week{entry['week']:02d}.md"
    lines = [
        (f"docs/{page.name}:{n}", line.strip())
        for n, line in enumerate(page.read_text("utf-8").splitlines(), 1)
        if line.strip() and not line.startswith(("<!--", "|", "```", "!["))
    ]
    return {
        "key_words": sorted(keys),
        "answered": [{"id": i, "question": entries[i]["question"], "see": entries[i]["see"]} for i, _ in similar],
        "headings": [{"see": ref, "heading": text} for ref, text in ranked(keys, headings(), 5)],
        "week_page": [{"see": ref, "line": text[:120]} for ref, text in ranked(keys, lines, 3)],
    }


def review(log, days):
    log = Path(log)
    if not log.is_file():
        raise cli.UserError(f"no confusion log at {log} yet: mark a question first with `add`")
    entries = fold(log)
    since = datetime.now().astimezone() - timedelta(days=days)

    def recent(stamp):
        return stamp is not None and datetime.fromisoformat(stamp) >= since

    open_ = [e for e in entries.values() if e["status"] == "open"]
    return {
        "log": str(log),
        "since_days": days,
        "open": [{**public(e), "look_at": suggestions(e, entries)} for e in open_ if recent(e["added"])],
        "older_open": [e["id"] for e in open_ if not recent(e["added"])],
        "resolved": [public(e) for e in entries.values() if e["status"] == "resolved" and recent(e["resolved"])],
    }


def public(entry):
    return {k: v for k, v in entry.items() if k != "line"}


# ---------------------------------------------------------------- printing
def print_entry(e, full):
    mark = "open" if e["status"] == "open" else "resolved"
    origin = "  (the plan's)" if e["source"] == "plan" else ""
    print(f"#{e['id']:<3} week {e['week']:<2} {mark:<8} {e['question']}{origin}")
    if e["found"]:
        print(f"      five minutes found: {e['found']}")
    if full and e["status"] == "resolved":
        print(f"      answer: {e['answer']}")
        for ref in e["see"]:
            print(f"      see: {ref}")


def print_review(r):
    print(f"The weekly hour: questions marked in the last {r['since_days']} days ({r['log']})")
    if not r["open"]:
        print("\nNothing open was marked in that time.")
    for e in r["open"]:
        print()
        print_entry(e, full=False)
        look = e["look_at"]
        print(f"      key words: {', '.join(look['key_words']) or 'none'}")
        for a in look["answered"]:
            print(f"      answered before, #{a['id']} {a['question']}: {', '.join(a['see'])}")
        for h in look["headings"]:
            print(f"      heading: {h['see']}  ({h['heading']})")
        for w in look["week_page"]:
            print(f"      week page: {w['see']}  {w['line']}")
        if not any(look[k] for k in ("answered", "headings", "week_page")):
            print("      nothing in the docs shares those words: rephrase it, or look further than this repository")
        print(f"      when it is clear: python -m curriculum.confusions resolve {e['id']} --answer ... --see ...")
    if r["older_open"]:
        print(f"\nStill open from before: {', '.join(f'#{i}' for i in r['older_open'])} (`list` shows them)")
    if r["resolved"]:
        print("\nResolved in that time (`list --all` shows the answers):")
        for e in r["resolved"]:
            print(f"#{e['id']:<3} week {e['week']:<2} {e['question']}  see: {', '.join(e['see'])}")


# ---------------------------------------------------------------- the command
def build_parser():
    parser = cli.Parser(prog="python -m curriculum.confusions", description=__doc__, formatter_class=cli.RawHelp)
    sub = parser.add_subparsers(dest="command", required=True)

    def log_arg(p):
        p.add_argument(
            "--log",
            type=cli.OutFile(".jsonl"),
            default=str(DEFAULT_LOG),
            help="the log, a JSON Lines file (default notes/confusions.jsonl at the repository root)",
        )

    p = sub.add_parser("add", help="mark a question you could not answer in five minutes")
    p.add_argument("question", type=cli.Text(), help="the question, in your words")
    p.add_argument("--week", type=cli.Count(1, 12), required=True, help="the week it came up in, 1 to 12")
    p.add_argument("--found", type=cli.Text(), help="what the five minutes of looking found (optional)")
    p.add_argument("--json", action="store_true", help="print the new entry's id as JSON")
    log_arg(p)
    p = sub.add_parser("list", help="the open questions (--all: the resolved ones too, with their answers)")
    p.add_argument("--week", type=cli.Count(1, 12), help="only the questions of this week, 1 to 12")
    p.add_argument("--all", action="store_true", help="the resolved questions too, with answers and pages")
    p.add_argument("--json", action="store_true", help="print the entries as JSON")
    log_arg(p)
    p = sub.add_parser("resolve", help="write down what answered a question, and where this repository shows it")
    p.add_argument("id", type=cli.Count(1, 1_000_000), help="the question's number, as `list` shows it")
    p.add_argument("--answer", type=cli.Text(), required=True, help="the answer, in your words")
    p.add_argument("--see", type=cli.Text(), action="append", required=True, help=f"repeatable: {SEE_HELP}")
    p.add_argument("--json", action="store_true", help="print the resolved entry as JSON")
    log_arg(p)
    p = sub.add_parser("review", help="the weekly hour: this week's marked questions and where to look")
    p.add_argument(
        "--since", type=cli.Count(1, 3650), default=7, help="the questions marked in the last N days (default 7)"
    )
    p.add_argument("--json", action="store_true", help="print the review as JSON")
    log_arg(p)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    log = Path(args.log)
    if args.command == "add":
        ident, started = add(log, args.question, args.week, args.found)
        if args.json:
            cli.print_json({"id": ident, "log": str(log), "started": started})
            return
        if started:
            print(f"started {log} with the plan's {len(PLAN)} questions, answered (`list --all` shows them)")
        print(f"marked #{ident} (week {args.week}); `review` in your weekly hour, `resolve {ident}` when it is clear")
    elif args.command == "list":
        entries, exists = load(log)
        shown = [e for e in entries.values() if (args.all or e["status"] == "open" or not exists)]
        shown = [public(e) for e in shown if args.week in (None, e["week"])]
        if args.json:
            cli.print_json({"log": str(log), "exists": exists, "entries": shown})
            return
        if not exists:
            print(f"no log at {log} yet; a new one starts with the plan's questions, answered:")
        elif not shown:
            print("nothing open" + (f" in week {args.week}" if args.week else "") + " (--all shows the resolved ones)")
        for e in shown:
            print_entry(e, full=args.all or not exists)
    elif args.command == "resolve":
        entry = resolve(log, args.id, args.answer, args.see)
        if args.json:
            cli.print_json(public(entry))
        else:
            print(f"resolved #{args.id}: {entry['question']}")
    else:
        cli.emit(review(log, args.since), args.json, print_review)


if __name__ == "__main__":
    cli.run(main)
