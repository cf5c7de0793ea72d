"""The fixed corpus every episode draws from: user voices, user lines by category, and the model's lines.

Everything here is a constant (no randomness, nothing at import but literals), so the clip bank can
synthesise the whole corpus ahead of time: `bank_entries(split)` is exactly the (text, voice) pairs a
scenario of that split may ask for. Train and held-out material are disjoint: held-out voices use
accents and eSpeak variants no train voice uses, and held-out user lines are different sentences
(other template wordings, other operands), so held-out episodes measure generalisation.

The model's side is a closed set: it always speaks with `MODEL_VOICE`, and `model_lines()` lists every
utterance any scenario lets it say (replies, acknowledgements, timer and cue responses, counts, and
every possible delegate answer).
"""

from __future__ import annotations

import re

from interaction_jax.audio.voices import Voice
from interaction_jax.data.episode import SPLITS, Split

# A plain voice (no variant) that no user has, slowish so its words' text tokens drain in time.
MODEL_VOICE = Voice(language="en-us", variant="", rate=150, pitch=50)

# (language, variant, rate wpm, pitch): held-out variants and the held-out accent appear in no train voice.
_TRAIN_VOICES = (
    ("en-us", "m3", 150, 45),
    ("en-gb", "f2", 170, 65),
    ("en-gb-scotland", "m7", 185, 40),
    ("en-us-nyc", "f4", 160, 70),
    ("en-gb-x-rp", "m2", 195, 35),
    ("en-029", "f1", 145, 60),
    ("en-gb-x-gbclan", "m5", 175, 50),
    ("en-us", "f5", 200, 75),
)
_HELDOUT_VOICES = (
    ("en-gb-x-gbcwmd", "m4", 165, 55),
    ("en-us", "f3", 155, 30),
    ("en-gb", "m6", 180, 68),
)

# ----------------------------------------------------------------------------------------------
# User lines

_STATEMENTS = (
    # train
    "I went for a long walk by the river this morning",
    "my sister is coming to visit next weekend",
    "the new cafe on the corner makes really good coffee",
    "I have been trying to learn how to play the guitar",
    "yesterday the train was late again",
    "we are thinking about painting the kitchen green",
    "I finally finished that book you told me about",
    "the weather has been strange all week",
    "my neighbour got a new puppy",
    "I think I left my umbrella at the office",
    "we should plan a trip to the mountains",
    "the garden is full of tomatoes this year",
    "I started running in the evenings",
    "the meeting went much better than I expected",
    "I cooked a big pot of soup on Sunday",
    "my phone keeps running out of battery",
    "there was a concert in the park last night",
    "I need to buy a present for my friend",
    "the library is closed on Mondays now",
    "I watched a documentary about whales",
    "my bike has a flat tyre again",
    "we found a nice little beach near the harbour",
    "I am not sure what to have for dinner",
    "the kids built a huge sand castle",
    "I have a dentist appointment tomorrow",
    "our team won the match on Saturday",
    "I want to try baking bread at home",
    "the museum has a new exhibition about space",
    "my grandmother turned ninety last month",
    "I moved my desk closer to the window",
    # held out
    "I lost my keys somewhere in the house",
    "the bakery ran out of croissants early",
    "we adopted two cats from the shelter",
    "my cousin is getting married in June",
    "the road to the village is being repaired",
    "I planted some herbs on the balcony",
    "the film was much longer than I thought",
    "I am going to visit my parents soon",
    "our old car finally broke down",
    "the snow made everything look so quiet",
)
_INTERRUPTIONS = (
    # train
    "wait, hold on a second",
    "sorry, can I stop you there",
    "hang on, I have a question",
    "actually, never mind that",
    "excuse me, one moment",
    "wait, what do you mean",
    "sorry to interrupt",
    "stop, let me think",
    # held out
    "hold on, just a minute",
    "sorry, I need to ask something",
    "one second please",
    "wait, go back a bit",
)
_TIME_TEMPLATES = {
    "train": ("tell me when {n} seconds have passed", "let me know when {n} seconds are up"),
    "heldout": ("say something after {n} seconds", "give me a signal in {n} seconds"),
}
TIME_REQUEST_SECONDS = (2, 3, 4, 5, 6)
_CUE_VISUAL_REQUESTS = (
    # train
    "tell me when you see a red square",
    "let me know when a red square shows up",
    "say something when the red square appears",
    "watch for a red square and tell me",
    "can you tell me when something red appears",
    # held out
    "keep an eye out for a red square",
    "tell me as soon as the red box appears",
)
_CUE_AUDIO_REQUESTS = (
    # train
    "tell me when you hear a beep",
    "let me know when the beep sounds",
    "say something when you hear the tone",
    "listen for a beep and tell me",
    "can you tell me when it beeps",
    # held out
    "tell me as soon as you hear the sound",
    "let me know once there is a beep",
)
_COUNT_REQUESTS = (
    # train
    "count how many times it moves",
    "can you count the movements for me",
    "count each time the shape goes back and forth",
    "please count the repetitions out loud",
    "tell me how many times it moves",
    # held out
    "keep count of the movements",
    "count out loud as it moves",
)
# Arithmetic operands: held-out sentences use operands no train sentence uses.
_ADDENDS = {"train": ((12, 17, 23, 34), (5, 16, 28)), "heldout": ((9, 41), (13, 27))}
_TIME_QUESTIONS = {"train": "what time is it", "heldout": "do you know what time it is"}
# Clock times an episode's "what time is it" may get (one drawn per episode; all are model lines).
CLOCK_TIMES = tuple(f"{hour}:{minute:02d}" for hour in range(1, 13) for minute in (0, 15, 30, 45))

CATEGORIES = (
    "statement",
    "interruption",
    "time_request",
    "cue_visual_request",
    "cue_audio_request",
    "count_request",
    "delegate_question",
)

# ----------------------------------------------------------------------------------------------
# Model lines

REPLIES = (
    "that sounds really nice",
    "oh, I did not know that",
    "tell me more about it",
    "that makes a lot of sense",
    "how did that happen",
    "I hope it goes well",
    "that is good to hear",
    "oh no, that is annoying",
    "what a lovely idea",
    "I would like that too",
    "that must have been fun",
    "why do you think so",
)
# Long enough (several seconds) that a barge-in can land well inside them.
LONG_REPLIES = (
    "well, there are a few different ways to look at that, so let me go through them one at a time",
    "that reminds me of something I read about last week, which was about how people plan their days",
    "okay, so the first thing to think about is how much time you have, and then what matters most to you",
    "I think the best approach would be to start small, see how it goes, and then slowly build from there",
)
INTERRUPTION_ANSWERS = ("sure, go ahead", "oh, sorry, what is it", "okay, I am listening", "of course, please go on")
BACKCHANNELS = ("mm-hm", "yeah", "right", "I see")
TIMER_RESPONSES = ("now", "time is up", "that is it")
# What the model says, by the reply rule, to a request it will act on later (a timer, a cue, a count).
ACKNOWLEDGEMENTS = ("okay", "sure", "will do", "got it")
CUE_RESPONSES = {"visual": ("I see it", "there it is"), "audio": ("I heard it", "there it was")}
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six")
LET_ME_CHECK = "let me check"


# ----------------------------------------------------------------------------------------------
# Accessors


def _check_split(split: str) -> Split:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    return split


def _voices(table) -> tuple[Voice, ...]:
    return tuple(Voice(language=lang, variant=var, rate=rate, pitch=pitch) for lang, var, rate, pitch in table)


def user_voices(split: Split) -> tuple[Voice, ...]:
    """The voices users of `split` speak with (train and held-out share no accent-variant pair)."""
    return _voices(_TRAIN_VOICES if _check_split(split) == "train" else _HELDOUT_VOICES)


def _train_or_heldout(lines: tuple[str, ...], num_heldout: int, split: Split) -> tuple[str, ...]:
    """The last `num_heldout` lines are held out; the rest are train."""
    return lines[:-num_heldout] if split == "train" else lines[-num_heldout:]


def time_request_text(template: str, seconds: int) -> str:
    return template.format(n=seconds)


def time_request_seconds(text: str) -> int:
    """N of a "tell me when N seconds have passed" line (the only integer in it)."""
    numbers = re.findall(r"\d+", text)
    if len(numbers) != 1:
        raise ValueError(f"not a time request: {text!r}")
    return int(numbers[0])


def time_templates(split: Split) -> tuple[str, ...]:
    """Wordings of the timer request for `split`; fill in N with `time_request_text`."""
    return _TIME_TEMPLATES[_check_split(split)]


def addition_question(a: int, b: int) -> str:
    return f"what is {a} plus {b}"


def addition_operands(split: Split) -> tuple[tuple[int, int], ...]:
    """The (A, B) pairs of the arithmetic questions of `split`."""
    firsts, seconds = _ADDENDS[_check_split(split)]
    return tuple((a, b) for a in firsts for b in seconds)


def time_question(split: Split) -> str:
    return _TIME_QUESTIONS[_check_split(split)]


def user_lines(category: str, split: Split) -> tuple[str, ...]:
    """The user sentences of `category` for `split` (train and held-out sentences are disjoint)."""
    split = _check_split(split)
    if category == "statement":
        return _train_or_heldout(_STATEMENTS, 10, split)
    if category == "interruption":
        return _train_or_heldout(_INTERRUPTIONS, 4, split)
    if category == "time_request":
        return tuple(time_request_text(t, n) for t in time_templates(split) for n in TIME_REQUEST_SECONDS)
    if category == "cue_visual_request":
        return _train_or_heldout(_CUE_VISUAL_REQUESTS, 2, split)
    if category == "cue_audio_request":
        return _train_or_heldout(_CUE_AUDIO_REQUESTS, 2, split)
    if category == "count_request":
        return _train_or_heldout(_COUNT_REQUESTS, 2, split)
    if category == "delegate_question":
        return (*(addition_question(a, b) for a, b in addition_operands(split)), time_question(split))
    raise ValueError(f"unknown user line category {category!r}; use one of {CATEGORIES}")


def delegate_answer_line(answer: str) -> str:
    """What the model says once a background result `answer` (a sum or a clock time) has arrived."""
    return f"it is {answer}"


def _all_delegate_answers() -> tuple[str, ...]:
    sums = sorted({a + b for split in SPLITS for a, b in addition_operands(split)})
    return (*(str(s) for s in sums), *CLOCK_TIMES)


def model_lines() -> tuple[str, ...]:
    """Every utterance the model ever says, in a fixed order (a closed set, all in MODEL_VOICE)."""
    lines = (
        *REPLIES,
        *LONG_REPLIES,
        *INTERRUPTION_ANSWERS,
        *BACKCHANNELS,
        *TIMER_RESPONSES,
        *ACKNOWLEDGEMENTS,
        *CUE_RESPONSES["visual"],
        *CUE_RESPONSES["audio"],
        *NUMBER_WORDS,
        LET_ME_CHECK,
        *(delegate_answer_line(a) for a in _all_delegate_answers()),
    )
    return tuple(dict.fromkeys(lines))  # de-duplicated, order kept


def bank_entries(split: Split) -> tuple[tuple[str, Voice], ...]:
    """Every (text, voice) a scenario of `split` may synthesise: its user lines × its user voices, plus
    the model's lines in the model's voice."""
    user = tuple(
        (line, voice) for category in CATEGORIES for line in user_lines(category, split) for voice in user_voices(split)
    )
    return user + tuple((line, MODEL_VOICE) for line in model_lines())
