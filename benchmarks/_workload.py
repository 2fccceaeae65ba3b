"""The ShareGPT-like request mix of ``engine_throughput.py`` (seeded, model-specific).

* Real chat model: chat prompts (the model's chat template) made of a varied built-in question
  or instruction, preceded by a slice of built-in context text sized so the templated prompt has
  a lognormal token length (median ~``prompt_median``, clipped to ``[min_len, max_len]``).
  Every request gets the same ``max_tokens``; answers end at EOS at their own lengths.
* Random-weight model: random byte-token prompts of lognormal length and a per-request output
  length (lognormal, clipped to ``[4, max_tokens]``) standing in for "EOS at different lengths"
  (a random model almost never samples EOS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

QUESTIONS = (
    "What is the capital of France?",
    "Answer in one word: what colour is the sky on a clear day?",
    "Write a haiku about autumn leaves.",
    "Explain how a bicycle gear system works.",
    "List three tips for staying focused while studying.",
    "What is photosynthesis? Answer in two sentences.",
    "Give me a short recipe for pancakes.",
    "Why do cats purr?",
    "Translate 'good morning' into Spanish.",
    "Write a short poem about the sea.",
    "What are the main differences between a virus and a bacterium?",
    "How many legs does a spider have?",
    "Describe the water cycle for a ten-year-old.",
    "Suggest a name for a small coffee shop.",
    "What is 12 times 7?",
    "Explain what a black hole is.",
    "Give two reasons why exercise is healthy.",
    "Write a one-sentence story about a dragon.",
    "What is the boiling point of water at sea level?",
    "How do I make a good first impression at a job interview?",
    "Summarize the plot of Romeo and Juliet in three sentences.",
    "What does a computer's CPU do?",
    "Name three famous painters.",
    "Write a friendly email declining a meeting invitation.",
)
CONTEXT_QUESTIONS = (
    "Summarize the text above in one sentence.",
    "What is the main topic of the text above?",
    "Give a short title for the text above.",
    "List the key facts mentioned in the text above.",
    "Explain the text above to a child.",
    "Is the text above about history, science or daily life? Answer briefly.",
    "Write three questions a student could ask about the text above.",
    "Rewrite the first sentence of the text above in simpler words.",
)
FILLER = """\
The history of the printing press begins in the fifteenth century, when Johannes Gutenberg \
combined movable metal type, oil-based ink and a wooden screw press into a practical system. \
Books that once took scribes months to copy could now be produced in days, and the price of \
reading material fell sharply. Within fifty years presses were running in more than two hundred \
European cities, and the spread of pamphlets, newspapers and scientific papers changed how ideas \
travelled.

Honeybees live in colonies that can hold tens of thousands of workers, a few hundred drones and \
a single queen. Workers gather nectar and pollen, build wax comb, feed the larvae and defend the \
hive. A forager that finds a rich patch of flowers returns and performs a waggle dance, whose \
angle and duration tell her sisters the direction and distance of the food. In winter the colony \
clusters together and shivers its flight muscles to keep the centre of the cluster warm.

Bread is made from flour, water, salt and a leavening agent such as yeast or a sourdough culture. \
When the dough is kneaded, gluten proteins form an elastic network that traps the carbon dioxide \
released by fermentation, so the loaf rises. Baking sets the structure, browns the crust through \
the Maillard reaction and drives off much of the water. Bakers adjust hydration, temperature and \
fermentation time to control the crumb, the crust and the flavour.

The Moon orbits the Earth about once every twenty-seven days, and because it rotates at the same \
rate it always shows us the same face. Its gravity raises tides in the oceans, and the friction of \
those tides slowly lengthens our day while pushing the Moon a few centimetres farther away each \
year. The dark plains visible from Earth are ancient lava flows, while the bright highlands are \
older crust covered in craters.

Modern railways carry passengers and freight across whole continents. Early steam locomotives \
burned coal to boil water, and the steam pushed pistons that turned the driving wheels. Diesel \
and electric traction later replaced steam on most lines, improving efficiency and reducing \
smoke. High-speed trains now run on dedicated tracks with gentle curves, reaching speeds above \
three hundred kilometres per hour, and compete with short-haul flights between large cities.

Forests cover about a third of the world's land area and store a large share of its carbon. \
Tropical rainforests hold the greatest variety of plants and animals, while boreal forests in \
the far north are dominated by conifers adapted to long, cold winters. Forests regulate rainfall, \
protect soils from erosion and provide timber, food and medicine, but clearing for agriculture \
and logging continues to shrink them in many regions.

A good night's sleep helps the body repair tissue and the brain consolidate memories. Adults \
usually need seven to nine hours, and regular sleeping times make falling asleep easier. Bright \
screens late in the evening can delay the release of melatonin, the hormone that signals night, \
while daylight in the morning helps set the internal clock. Caffeine, heavy meals and alcohol \
close to bedtime tend to make sleep lighter and more broken.
"""


@dataclass
class Workload:
    """Prompts (token ids), per-request ``max_tokens`` and what ends a request."""

    kind: str  # "chat" or "random"
    prompts: list[list[int]]
    max_tokens: list[int]
    eos_ids: list[int]
    pad_id: int
    notes: list[str] = field(default_factory=list)

    @property
    def num_requests(self) -> int:
        return len(self.prompts)

    def describe(self) -> str:
        lens = np.array([len(p) for p in self.prompts])
        mts = np.array(self.max_tokens)
        return (
            f"{self.num_requests} requests, prompt tokens min/p50/mean/max "
            f"{lens.min()}/{int(np.median(lens))}/{lens.mean():.0f}/{lens.max()}, "
            f"max_tokens min/p50/max {mts.min()}/{int(np.median(mts))}/{mts.max()}"
        )


def lognormal_lengths(
    rng: np.random.Generator, n: int, median: float, sigma: float, low: int, high: int
) -> list[int]:
    x = rng.lognormal(mean=np.log(median), sigma=sigma, size=n)
    return [int(v) for v in np.clip(np.round(x), low, high)]


def random_workload(
    vocab_low: int,
    vocab_high: int,
    eos_ids: list[int],
    pad_id: int,
    *,
    num_requests: int,
    max_tokens: int,
    seed: int,
    min_len: int = 16,
    max_len: int = 512,
    prompt_median: float = 120.0,
) -> Workload:
    """Random token prompts in ``[vocab_low, vocab_high)`` (EOS excluded) and per-request output
    lengths."""
    rng = np.random.default_rng(seed)
    lens = lognormal_lengths(rng, num_requests, prompt_median, 0.8, min_len, max_len)
    outs = lognormal_lengths(rng, num_requests, max(4.0, max_tokens / 2), 0.7, 4, max_tokens)
    banned = set(eos_ids) | {pad_id}
    prompts = []
    for n in lens:
        ids = rng.integers(vocab_low, vocab_high, size=n).tolist()
        prompts.append([t if t not in banned else vocab_low + 7 for t in ids])
    return Workload(
        "random",
        prompts,
        outs,
        list(eos_ids),
        pad_id,
        ["random token prompts; per-request max_tokens (lognormal) stand in for EOS"],
    )


def chat_workload(
    tokenizer: Any,
    eos_ids: list[int],
    pad_id: int,
    *,
    num_requests: int,
    max_tokens: int,
    seed: int,
    min_len: int = 16,
    max_len: int = 512,
    prompt_median: float = 120.0,
) -> Workload:
    """Chat prompts (chat template applied) of lognormal token length; one ``max_tokens``."""
    rng = np.random.default_rng(seed)
    targets = lognormal_lengths(rng, num_requests, prompt_median, 0.8, min_len, max_len)
    filler_ids = tokenizer.encode(FILLER, add_special_tokens=False)

    def render(content: str) -> list[int]:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        return [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]

    prompts = []
    for target in targets:
        q = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        bare = render(q)
        room = target - len(bare) - 8
        if room < 24:  # too short for context: a plain question
            prompts.append(bare)
            continue
        q = CONTEXT_QUESTIONS[int(rng.integers(len(CONTEXT_QUESTIONS)))]
        room = min(room, len(filler_ids))
        start = int(rng.integers(0, len(filler_ids) - room + 1))
        context = tokenizer.decode(filler_ids[start : start + room]).strip()
        prompts.append(render(f"{context}\n\n{q}"))
    return Workload(
        "chat",
        prompts,
        [max_tokens] * num_requests,
        list(eos_ids),
        pad_id,
        [
            "chat prompts (built-in questions, context slices), chat template applied; "
            "one max_tokens, EOS ends answers"
        ],
    )
