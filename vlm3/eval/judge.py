"""Re-score object prediction lines with an LLM judge, the way SpatialRGPT-Bench's official scorer does.

vlm3 scores object answers with rules (:mod:`vlm3.tasks.object3d`: verdict words and stated
relations, lengths with units, clock hours, the region named). SpatialRGPT-Bench's published numbers
come from a GPT-4 judge instead: ``scripts/srgpt/eval/evaluate_spatial_with_gpt4.py`` and its
few-shot files ``scripts/srgpt/eval/prompt_templates/<category>.txt`` in github.com/AnjieCheng/SpatialRGPT.
This module replays that protocol over any OpenAI-compatible chat endpoint, so the two can be
compared (:func:`agreement`). The prompts below paraphrase the official ones (same instructions,
same output keys, same kinds of examples, our own wording and numbers):

- yes/no predicates and choices: the judge compares the response with the correct answer and
  outputs ``{"your_mark": 0 or 1}``; few-shot examples for the question's relation (the official
  file per predicate category; one file, ``choice.txt``, for every ``*_choice`` category).
  Correct when the mark is > 0.
- distances and sizes: the judge converts the correct answer and the response to metres
  (1 inch = 0.0254 m, 1 foot = 0.3048 m, 1 cm = 0.01 m) and outputs
  ``{"answer_in_meters": a, "response_in_meters": r}``; correct when 0.75 a <= r <= 1.25 a.
- directions: the judge outputs the two clock hours ``{"answer_direction": h, "response_direction": g}``;
  correct when they differ by at most 1 hour (circularly).

Each request: system "You are a helpful assistant designed to output JSON.", the prompt as the user
message, ``response_format`` JSON object (``json_mode``). Deviations: ``temperature`` defaults to 0
(the official script leaves the API default) so that a judge run repeats; a reply that cannot be
read is None here, where the official script counts it as wrong (and in ``Match_fail_count``).

A prediction line needs ``question`` (as asked), ``reference`` (the reference answer as asked),
``raw`` (the model's answer), ``kind`` and ``category``; the object task writes all of them. A
line that was never asked (``not_asked``) or has no ``raw`` gets None without a request.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

SYSTEM = "You are a helpful assistant designed to output JSON."

_HEAD = (
    "Help me evaluate a response, given the question and the correct answer.\n"
)

QUALITATIVE_PROMPT = (
    _HEAD
    + "Mark the response with a single integer, 0 or 1:\n"
    "1 means the response matches the correct answer,\n"
    "0 means the response is different from the correct answer.\n"
    "Output JSON.\n\n"
    "{examples}\n\n"
    "Your Turn:\nQuestion: {question}\nAnswer: {answer}\nResponse: {response}\n"
)

DISTANCE_PROMPT = (
    _HEAD
    + "Convert the distance in the correct answer and the distance in the response to meters, using "
    "1 inch = 0.0254 meters, 1 foot = 0.3048 meters, 1 centimeter (cm) = 0.01 meters.\n"
    "Output two floats in meters, one for the answer and one for the response, as JSON.\n\n"
    "Example 1:\nQuestion: What is the width of Region [0]?\nAnswer: Region [0] is 0.86 meters wide.\n"
    "Response: The width of Region [0] is 1.9 meters.\n\"answer_in_meters\": 0.86, \"response_in_meters\": 1.9\n\n"
    "Example 2:\nQuestion: How tall is Region [1]?\nAnswer: The height of Region [1] is 20.0 inches.\n"
    "Response: About 61 centimeters.\n\"answer_in_meters\": 0.51, \"response_in_meters\": 0.61\n\n"
    "Example 3:\nQuestion: Measure the width of Region [0].\nAnswer: It is 45.3 centimeters.\n"
    "Response: Region [0] is 15.2 inches wide.\n\"answer_in_meters\": 0.45, \"response_in_meters\": 0.39\n\n"
    "Example 4:\nQuestion: How far apart are Region [0] and Region [1]?\nAnswer: They are 7.25 meters apart.\n"
    "Response: 18.4 feet.\n\"answer_in_meters\": 7.25, \"response_in_meters\": 5.61\n\n"
    "Your Turn:\nQuestion: {question}\nAnswer: {answer}\nResponse: {response}\n"
)

DIRECTION_PROMPT = (
    _HEAD
    + "Read the direction of the correct answer and of the response.\n"
    "Output two integers as clock directions, one for the answer and one for the response, as JSON.\n\n"
    "Example 1:\nQuestion: If you are at Region [0], where will you find Region [1]?\n"
    "Answer: Region [1] is roughly at 4 o'clock from Region [0].\n"
    "Response: Standing at Region [0], Region [1] is around the 4 o'clock direction.\n"
    "\"answer_direction\": 4, \"response_direction\": 4\n\n"
    "Example 2:\nQuestion: If you are at Region [0], where will you find Region [1]?\n"
    "Answer: Region [0] will find Region [1] around the 1 o'clock direction.\n"
    "Response: Region [1] is at 12 o'clock from Region [0].\n"
    "\"answer_direction\": 1, \"response_direction\": 12\n\n"
    "Your Turn:\nQuestion: {question}\nAnswer: {answer}\nResponse: {response}\n"
)

# predicate -> (relation as stated, the opposite relation), for the few-shot examples.
_RELATIONS: dict[str, tuple[str, str]] = {
    "left": ("to the left of", "to the right of"),
    "right": ("to the right of", "to the left of"),
    "above": ("above", "below"),
    "below": ("below", "above"),
    "wide": ("wider than", "narrower than"),
    "thin": ("thinner than", "wider than"),
    "big": ("bigger than", "smaller than"),
    "small": ("smaller than", "larger than"),
    "tall": ("taller than", "shorter than"),
    "short": ("shorter than", "taller than"),
    "behind": ("behind", "in front of"),
    "front": ("in front of", "behind"),
}


def predicate_examples(predicate: str, question: str) -> str:
    """Five examples for a yes/no question about ``predicate``, built like the official
    ``<predicate>_predicate.txt`` files: agreeing affirmations (1), an affirmation answered with the
    opposite relation (0), a negation answered with an affirmation (0), a negation answered with the
    opposite relation (1). Each example repeats the question being judged, as there."""
    rel, opp = _RELATIONS[predicate]
    a, b = "Region [0]", "Region [1]"
    cases = [
        (f"Yes, {a} is {rel} {b}.", f"Indeed, {a} is {rel} {b}.", 1),
        (f"Correct, {a} is {rel} {b}.", f"Yes, {a} is {rel} {b}.", 1),
        (f"Indeed, {a} is {rel} {b}.", f"In fact, {a} is {opp} {b}.", 0),
        (f"Incorrect, {a} is not {rel} {b}.", f"Correct, {a} is {rel} {b}.", 0),
        (f"Incorrect, {a} is not {rel} {b}.", f"In fact, {a} is {opp} {b}.", 1),
    ]
    return "\n\n".join(
        f"Example {i}:\nQuestion: {question}\nAnswer: {ans}\nResponse: {resp}\n\"your_mark\": {mark}"
        for i, (ans, resp, mark) in enumerate(cases, start=1)
    )


CHOICE_EXAMPLES = (
    "Example 1:\nQuestion: Which is shorter, Region [0] or Region [1]?\nAnswer: With less height is Region [1].\n"
    "Response: Region [0] is the shorter one.\n\"your_mark\": 0\n\n"
    "Example 2:\nQuestion: Between Region [0] and Region [1], which one appears on the left side from the viewer's perspective?\n"
    "Answer: From the viewer's perspective, Region [0] appears more on the left side.\nResponse: Region [0].\n\"your_mark\": 1\n\n"
    "Example 3:\nQuestion: Which is below, Region [0] or Region [1]?\nAnswer: Positioned lower is Region [1].\n"
    "Response: Region [1] is lower down.\n\"your_mark\": 1\n\n"
    "Example 4:\nQuestion: Who is higher up, Region [0] or Region [1]?\nAnswer: Region [0] is above.\n"
    "Response: Region [1] is positioned higher.\n\"your_mark\": 0"
)


class JudgeError(ValueError):
    """A prediction line the judge cannot be asked about (missing fields, unknown kind)."""


def judge_prompt(line: dict[str, Any]) -> tuple[str, str]:
    """(protocol, user prompt) for one prediction line; protocol is "mark", "meters" or "clock"."""
    for key in ("question", "reference", "raw", "kind"):
        if not isinstance(line.get(key), str):
            raise JudgeError(f"prediction line {line.get('key', '?')}: {key!r} must be text, got {line.get(key)!r}")
    kind, category = line["kind"], str(line.get("category") or "")
    parts = {"question": line["question"], "answer": line["reference"], "response": line["raw"]}
    if kind == "quantitative":
        return "meters", DISTANCE_PROMPT.format(**parts)
    if kind == "direction":
        return "clock", DIRECTION_PROMPT.format(**parts)
    if kind == "choice" or "choice" in category:
        return "mark", QUALITATIVE_PROMPT.format(examples=CHOICE_EXAMPLES, **parts)
    if kind == "qualitative":
        predicate = category.split("_", 1)[0]
        if predicate not in _RELATIONS:
            raise JudgeError(f"prediction line {line.get('key', '?')}: no relation known for category {category!r}")
        return "mark", QUALITATIVE_PROMPT.format(examples=predicate_examples(predicate, line["question"]), **parts)
    raise JudgeError(f"prediction line {line.get('key', '?')}: unknown kind {kind!r}")


def read_reply(text: str | None) -> dict[str, Any] | None:
    """The JSON object of a judge reply; also the examples' bare ``"key": value`` form; else None."""
    if not isinstance(text, str):
        return None
    body = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", body, re.DOTALL)
    if fence:
        body = fence.group(1).strip()
    for candidate in (body, "{" + body.strip().rstrip(",") + "}"):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    found = dict(re.findall(r'"(\w+)"\s*:\s*(-?\d+(?:\.\d+)?)', body))
    return {k: float(v) for k, v in found.items()} or None


def verdict(protocol: str, reply: dict[str, Any] | None) -> bool | None:
    """Correct or not from a parsed reply (official rules, see module doc); None when unreadable."""
    if reply is None:
        return None
    try:
        if protocol == "mark":
            return float(reply["your_mark"]) > 0
        if protocol == "meters":
            a, r = float(reply["answer_in_meters"]), float(reply["response_in_meters"])
            return 0.75 * a <= r <= 1.25 * a
        a, r = int(float(reply["answer_direction"])), int(float(reply["response_direction"]))
        d = abs(a - r) % 12
        return min(d, 12 - d) <= 1
    except (KeyError, TypeError, ValueError):
        return None


def judge_line(line: dict[str, Any], client: Any, model: str, *, temperature: float | None = 0.0, json_mode: bool = True) -> bool | None:
    """The judge's verdict on one prediction line; None when not asked, or the reply is unreadable.

    ``client`` is an ``openai.OpenAI`` (or anything with ``chat.completions.create``).
    """
    if line.get("not_asked") or not isinstance(line.get("raw"), str):
        return None
    protocol, prompt = judge_prompt(line)
    options: dict[str, Any] = {}
    if temperature is not None:
        options["temperature"] = temperature
    if json_mode:
        options["response_format"] = {"type": "json_object"}
    try:
        response = client.chat.completions.create(
            model=model, messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}], **options
        )
        text = response.choices[0].message.content
    except Exception as e:  # an HTTP / API error: that line is unjudged, the others go on
        if type(e).__name__ in ("AuthenticationError", "NotFoundError", "PermissionDeniedError"):
            raise  # a wrong key, model or URL fails every line: say so at once
        return None
    return verdict(protocol, read_reply(text))


def judge_lines(lines: Sequence[dict[str, Any]], client: Any, model: str, *, workers: int = 4, **options: Any) -> list[bool | None]:
    """:func:`judge_line` for each line, in order (``workers`` requests in flight)."""
    for line in lines:  # fail on a malformed line before sending anything
        if not line.get("not_asked") and isinstance(line.get("raw"), str):
            judge_prompt(line)
    if workers <= 1:
        return [judge_line(line, client, model, **options) for line in lines]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda line: judge_line(line, client, model, **options), lines))


def rule_verdicts(lines: Sequence[dict[str, Any]]) -> list[bool]:
    """vlm3's own verdict per prediction line (the rules of ``object_metrics``; unparsed = wrong)."""
    from vlm3.tasks.object3d import line_correct

    return [line_correct(line) for line in lines]


def agreement(rule_correct: Sequence[bool], judge_correct: Sequence[bool | None]) -> dict[str, Any]:
    """How often the judge agrees with vlm3's rules, over the lines it judged.

    ``n`` lines, ``judged`` (judge verdict not None), ``agree``, ``share_agreeing`` (agree / judged,
    NaN when none), ``both_correct``, ``both_wrong``, ``only_rule_correct``, ``only_judge_correct``,
    ``unjudged``, and the two accuracies over the judged lines (``rule_acc``, ``judge_acc``).
    """
    if len(rule_correct) != len(judge_correct):
        raise ValueError(f"{len(rule_correct)} rule verdicts for {len(judge_correct)} judge verdicts")
    pairs = [(bool(r), bool(j)) for r, j in zip(rule_correct, judge_correct) if j is not None]
    judged = len(pairs)
    count = {
        "both_correct": sum(r and j for r, j in pairs),
        "both_wrong": sum(not r and not j for r, j in pairs),
        "only_rule_correct": sum(r and not j for r, j in pairs),
        "only_judge_correct": sum(j and not r for r, j in pairs),
    }
    agree = count["both_correct"] + count["both_wrong"]
    nan = float("nan")
    return {
        "n": len(judge_correct),
        "judged": judged,
        "unjudged": len(judge_correct) - judged,
        "agree": agree,
        "share_agreeing": agree / judged if judged else nan,
        **count,
        "rule_acc": sum(r for r, _ in pairs) / judged if judged else nan,
        "judge_acc": sum(j for _, j in pairs) / judged if judged else nan,
    }


def make_client(base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", **options: Any) -> Any:
    """An ``openai.OpenAI`` client for ``base_url`` (None: the library's default / OPENAI_BASE_URL),
    its key from the environment variable ``api_key_env`` (a placeholder when unset: local servers
    often need none)."""
    import openai

    return openai.OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "none", **options)


JUDGE_FILE = "judge.jsonl"
"""Where ``vlm3 eval --judge`` keeps each line's verdict (resumable: a line judged before is not sent again)."""


def judge_run(out: str | os.PathLike, lines: Sequence[dict[str, Any]], client: Any, model: str, *, base_url: str | None = None, workers: int = 4) -> dict[str, Any]:
    """Judge an evaluation's object prediction lines (reusing verdicts in ``out/judge.jsonl`` for
    the same answer) and summarise: the official protocol's scores per kind and per group, where
    an unjudged line counts as wrong as the official script counts it, and the agreement with
    vlm3's rules (:func:`agreement`). Goes into ``metrics.json`` as ``judge``."""
    import hashlib
    from pathlib import Path

    from vlm3.tasks.object3d import SRGPT_GROUPS

    def line_group(line: dict[str, Any]) -> str | None:
        return SRGPT_GROUPS.get(str(line.get("category")))

    path = Path(out) / JUDGE_FILE

    def key(line: dict[str, Any]) -> str:
        raw = line.get("raw") if isinstance(line.get("raw"), str) else ""
        return f"{line['key']}|{model}|" + hashlib.sha1(raw.encode()).hexdigest()[:12]

    known: dict[str, bool | None] = {}
    if path.is_file():
        for text in path.read_text().splitlines():
            try:
                item = json.loads(text)
                known[item["id"]] = item["verdict"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut by an interruption: judged again
    todo = [line for line in lines if key(line) not in known]
    verdicts = judge_lines(todo, client, model, workers=workers)
    sendable = [line for line in todo if not line.get("not_asked") and isinstance(line.get("raw"), str)]
    if sendable and all(v is None for v in verdicts):  # nothing readable came back: the endpoint, not the answers
        raise JudgeError(f"the judge gave no readable verdict for any of {len(sendable)} answers (is {base_url or 'the endpoint'} serving {model!r}?)")
    with open(path, "a", encoding="utf-8") as f:
        for line, v in zip(todo, verdicts):
            known[key(line)] = v
            f.write(json.dumps({"id": key(line), "key": line["key"], "verdict": v}) + "\n")
    judge = [known[key(line)] for line in lines]
    rule = rule_verdicts(lines)

    def share(mask: list[bool]) -> float | None:
        picked = [bool(j) for j, m in zip(judge, mask) if m]
        return sum(picked) / len(picked) if picked else None

    kinds = sorted({str(line.get("kind")) for line in lines})
    groups = sorted({g for g in (line_group(line) for line in lines) if g is not None})
    return {
        "model": model,
        "base_url": base_url,
        "file": str(path),
        "scores": {kind: share([line.get("kind") == kind for line in lines]) for kind in kinds},
        "groups": {g: share([line_group(line) == g for line in lines]) for g in groups},
        "agreement": agreement(rule, judge),
    }
