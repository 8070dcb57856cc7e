# ruff: noqa: E501 - tables of sentences read better one per line
"""A seeded generator of multi-session conversations with planted facts and questions about them,
for the session-memory recall benchmark (benchmarks/recall.py).

Several personas each talk to an assistant over many sessions. Most of every session is everyday
help (cooking, code, budgets, gardening …), shared in kind by all personas. Into some sessions
the persona drops a fact about their life: a pet, a job, a city, a trip, a relative, a date.
Some facts change later (a new job, a move, a new favourite dish), and questions about them ask
for the current value or the earlier one.

Each question paraphrases its fact instead of quoting it ("What did Maya name the animal that
joined the household?" for "We adopted a beagle from the shelter, we're calling him Biscuit"),
names the persona, and is labelled with its evidence session: the one a good memory must find.
One question in three is a follow-up that names the thing itself ("What kind of animal is
Biscuit, the pet Maya mentioned?"), as an agent asks once it knows a name. The same seed gives
the same sessions and questions.

Two ways of naming sessions (`naming`): "persona" ("Maya - chat 3", the recall benchmark's) and
"numbered" ("chat 3"), where only what is said tells whose session it is. And questions whose
answer is in no session (`unrelated_questions`), for calibrating a match's relevance
(benchmarks/relevance.py): off-topic ones, ones about a persona's life that the persona never
told, and the corpus's own kinds of question about people who are not in it. Their sentences come
in two halves, one to tune on and one held out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

PERSONAS = [
    "Maya Okafor", "Lucas Brennan", "Priya Raman", "Tomas Alvarez", "Hannah Kim", "Omar Haddad",
    "Greta Lindqvist", "Kenji Watanabe",
]  # fmt: skip

# Everyday help: (user, assistant) exchanges by topic. Sessions are mostly these.
TOPICS: dict[str, list[tuple[str, str]]] = {
    "cooking": [
        (
            "How long should I rest a steak after cooking?",
            "About five to ten minutes, loosely covered, so the juices settle.",
        ),
        (
            "Can I freeze leftover rice safely?",
            "Yes, cool it quickly and freeze it within an hour; reheat until steaming hot.",
        ),
        (
            "What's a good substitute for buttermilk?",
            "Stir a tablespoon of lemon juice into a cup of milk and wait five minutes.",
        ),
        (
            "My sauce keeps splitting, any idea why?",
            "The heat is probably too high; whisk in the butter off the heat a little at a time.",
        ),
        (
            "Which oil is best for high heat frying?",
            "Use one with a high smoke point, such as peanut, canola or sunflower oil.",
        ),
        (
            "How do I keep herbs fresh longer?",
            "Trim the stems and keep them in a glass of water in the fridge, loosely bagged.",
        ),
    ],
    "code": [
        (
            "My Python script says list index out of range.",
            "You are reading past the end of the list; check the loop bounds and empty lists.",
        ),
        (
            "Should I use a dict or a list for lookups?",
            "A dict: lookups by key are constant time, a list has to be scanned.",
        ),
        (
            "How do I undo my last git commit but keep the changes?",
            "Run git reset --soft HEAD~1; the changes stay staged.",
        ),
        (
            "Why is my SQL query so slow?",
            "Look at the query plan; an index on the column you filter or join on usually helps.",
        ),
        (
            "What does a 403 error mean?",
            "The server understood the request but refuses it: the credentials lack permission.",
        ),
        (
            "How should I name my test functions?",
            "Say what behaviour they check, so a failure reads like a sentence.",
        ),
    ],
    "budget": [
        (
            "How much should I keep in an emergency fund?",
            "Three to six months of essential expenses is the usual guidance.",
        ),
        (
            "Is it better to pay off debt or save first?",
            "Pay high-interest debt first, while keeping a small cushion for surprises.",
        ),
        (
            "How can I cut my grocery bill?",
            "Plan meals for the week, shop with a list, and buy staples in bulk.",
        ),
        (
            "What's the 50/30/20 rule?",
            "Half of income to needs, thirty percent to wants, twenty percent to savings.",
        ),
        (
            "Should I cancel some subscriptions?",
            "List them with their monthly cost and drop the ones you did not use last month.",
        ),
        (
            "How do I track spending without an app?",
            "A simple spreadsheet with date, amount and category works well.",
        ),
    ],
    "garden": [
        (
            "Why are my tomato leaves turning yellow?",
            "Often overwatering or a lack of nitrogen; water at the base and feed lightly.",
        ),
        ("When should I plant garlic?", "In autumn, a few weeks before the ground freezes."),
        (
            "How often should I water succulents?",
            "Only when the soil is completely dry, usually every two weeks.",
        ),
        (
            "What keeps slugs off lettuce?",
            "Copper tape, beer traps, or a ring of crushed eggshells around the plants.",
        ),
        ("Can I compost citrus peels?", "Yes, in moderation; chop them small so they break down faster."),
        ("How much sun do herbs need?", "Most want six hours of direct sun a day."),
    ],
    "fitness": [
        ("How many rest days should I take a week?", "One or two, and more if you feel run down."),
        (
            "Is it fine to stretch before running?",
            "Prefer a dynamic warm-up first; save long static stretches for afterwards.",
        ),
        (
            "What should I eat after a workout?",
            "Some protein and carbohydrate within a couple of hours, like yogurt and fruit.",
        ),
        (
            "How do I stop my knees hurting on squats?",
            "Keep the knees tracking over the toes and do not let them cave inwards.",
        ),
        (
            "How much water should I drink while exercising?",
            "Sip regularly, roughly half a litre an hour, more in the heat.",
        ),
        (
            "Can I build muscle with body weight only?",
            "Yes, with progressions such as harder push-up variations and slower reps.",
        ),
    ],
    "movies": [
        (
            "Can you recommend a good thriller?",
            "Try a slow-burn mystery with a twist; many people like the classic Hitchcock films.",
        ),
        ("What's a family movie for a rainy day?", "An animated adventure is a safe choice for every age."),
        (
            "Is it worth watching the director's cut?",
            "If you liked the film, yes; it usually restores character scenes.",
        ),
        (
            "Any documentaries about the ocean?",
            "Nature series about the deep sea are beautiful and calm to watch.",
        ),
        (
            "How do I pick a film everyone agrees on?",
            "Let each person veto one option, then choose from what remains.",
        ),
        (
            "What's a good comedy from the nineties?",
            "Many people enjoy the classic ensemble comedies from that decade.",
        ),
    ],
    "home": [
        (
            "How do I get rid of condensation on windows?",
            "Ventilate after showers and cooking, and use a dehumidifier if needed.",
        ),
        (
            "What's the best way to clean grout?",
            "A paste of baking soda and water, scrubbed with an old toothbrush.",
        ),
        (
            "How do I fix a squeaky door?",
            "Put a little oil on the hinge pins and open and close the door a few times.",
        ),
        (
            "Should I paint the ceiling first?",
            "Yes, ceiling first, then walls, so drips never land on finished work.",
        ),
        (
            "How do I unclog a drain without chemicals?",
            "Hot water, then baking soda and vinegar, and a plunger if that fails.",
        ),
        ("How often should I replace smoke alarm batteries?", "Once a year, and test the alarm every month."),
    ],
    "sleep": [
        (
            "I keep waking up at 3am, any tips?",
            "Keep a fixed wake-up time, avoid screens late, and keep the room cool.",
        ),
        (
            "Is napping bad for night sleep?",
            "A short nap before mid-afternoon is usually fine; long late naps can hurt.",
        ),
        (
            "Does caffeine really matter after lunch?",
            "For many people yes; it can stay in your system for six hours or more.",
        ),
        (
            "What temperature is best for sleeping?",
            "A slightly cool room, around eighteen degrees Celsius, suits most people.",
        ),
        (
            "How can I wind down after work?",
            "A short walk, a shower and a book instead of the phone help many people.",
        ),
        (
            "Should I get up if I can't fall asleep?",
            "After about twenty minutes, yes; do something calm until you feel sleepy.",
        ),
    ],
}
SMALL_TALK: list[tuple[str, str]] = [
    ("Thanks, that helps a lot.", "Glad to help! Anything else on your mind?"),
    ("Busy week here, sorry for the short messages.", "No problem at all, take your time."),
    ("Okay, one more thing before I go.", "Sure, go ahead."),
    ("That makes sense.", "Great, let me know how it goes."),
]


@dataclass(frozen=True)
class Fact:
    kind: str
    statements: tuple[str, ...]  # user lines, one chosen
    questions: tuple[tuple[str, str], ...]  # (question, which: "this" | "latest" | "earlier")


# Each fact kind: values to draw from, how the persona says it, how a question asks for it.
# Questions avoid the statement's words where a person would; they name the persona.
PET = (
    [("beagle", "Biscuit"), ("tabby cat", "Miso"), ("parrot", "Kiwi"), ("corgi", "Waffles"), ("rabbit", "Clover"),
     ("husky", "Juniper"), ("tortoise", "Sheldon"), ("ferret", "Pickles")],
    ["We adopted a {0} from the shelter last weekend, we're calling him {1}.",
     "Our new {0} {1} came home on Saturday and already chewed a slipper."],
    [("What did {first} name the animal that joined the household?", "this"),
     ("Which kind of animal did {first} take in recently?", "this"),
     ("What kind of animal is {1}, the pet {first} mentioned?", "this")],
)  # fmt: skip
JOB = (
    [("nurse", "St. Brigid's hospital"), ("data analyst", "Northwind Logistics"),
     ("chemistry teacher", "Lakeside Academy"), ("pastry chef", "Le Petit Four"),
     ("paramedic", "the county ambulance service"), ("architect", "Holm and Berg"),
     ("journalist", "the Harbor Gazette"), ("pharmacist", "Greenleaf Pharmacy")],
    ["I signed the contract today: starting Monday I'm a {0} at {1}.",
     "Good news, I got the offer to work as a {0} at {1}."],
    [("What does {first} do for a living these days?", "latest"),
     ("Which employer did {first} work for before changing careers?", "earlier"),
     ("What is {first}'s role at {1}?", "latest")],
)  # fmt: skip
CITY = (
    ["Lisbon", "Montreal", "Osaka", "Edinburgh", "Nairobi", "Melbourne", "Denver", "Valparaiso", "Krakow", "Tallinn"],
    ["The movers finally delivered everything, so we officially live in {0} now.",
     "We signed the lease, so from this month our address is in {0}."],
    [("Which city is {first}'s current home?", "latest"),
     ("Where was {first} based before the most recent relocation?", "earlier"),
     ("How is {first} settling in to life in {0}?", "latest")],
)  # fmt: skip
SIBLING = (
    [("Amara", "June"), ("Felix", "October"), ("Rosa", "May"), ("Jonah", "September"), ("Ines", "August"),
     ("Theo", "April"), ("Lena", "July"), ("Rafael", "March")],
    ["My younger sibling {0} just got engaged, the wedding is planned for {1}.",
     "Family update: {0} proposed last night! They want the ceremony in {1}."],
    [("Which relative of {first} is about to get married?", "this"),
     ("In which month is the family wedding {first} mentioned?", "this"),
     ("What happened between {0} and their partner, according to {first}?", "this")],
)  # fmt: skip
TRIP = (
    [("the Dolomites", "February"), ("Patagonia", "November"), ("Iceland", "March"), ("Hokkaido", "January"),
     ("the Scottish Highlands", "June"), ("Crete", "September"), ("Banff", "August"), ("Tasmania", "December")],
    ["I booked flights to {0} for the second week of {1}, can't wait to go hiking there.",
     "Tickets are bought: {0} in {1}, two weeks of trails and no laptop."],
    [("Where is {first} going on holiday?", "this"),
     ("When does {first}'s vacation abroad start?", "this"),
     ("What does {first} plan to do in {0}?", "this")],
)  # fmt: skip
INSTRUMENT = (
    [("cello", "Mrs. Duarte"), ("banjo", "a man called Pete"), ("piano", "Ms. Ilves"), ("violin", "Dr. Sato"),
     ("drums", "a student named Kofi"), ("saxophone", "Mr. Varga"), ("ukulele", "Auntie Lani"),
     ("harp", "Mrs. O'Neill")],
    ["I started taking {0} lessons on Thursdays with {1}.",
     "Guess what, I rented a {0} and {1} is teaching me twice a month."],
    [("What musical hobby has {first} picked up?", "this"),
     ("Who teaches {first} to play music?", "this"),
     ("What is {first} learning from {1}?", "this")],
)  # fmt: skip
CAR = (
    [("Subaru Outback", "dark green"), ("Volvo wagon", "silver"), ("Honda Civic", "red"), ("Ford pickup", "blue"),
     ("Tesla Model 3", "white"), ("Mini Cooper", "yellow"), ("Toyota Prius", "grey"), ("Jeep Wrangler", "orange")],
    ["I traded in the old hatchback for a used {0} in {1}.",
     "Finally picked up the {1} {0} from the dealer yesterday."],
    [("What vehicle does {first} drive now?", "this"),
     ("Which colour is the car {first} bought?", "this"),
     ("What did {first} give up to get the {0}?", "this")],
)  # fmt: skip
BIRTHDAY = (
    ["March 14", "July 2", "November 23", "January 9", "August 30", "May 17", "October 5", "December 12"],
    ["My birthday is on {0}, and this year I just want a quiet dinner.",
     "Heads up, {0} is my birthday, so I'm taking the day off."],
    [("On what date does {first} turn a year older?", "this"),
     ("When should we wish {first} many happy returns?", "this"),
     ("What does {first} want to do on {0}?", "this")],
)  # fmt: skip
BOOK = (
    [("The Overstory", "Richard Powers"), ("Piranesi", "Susanna Clarke"), ("Middlemarch", "George Eliot"),
     ("The Remains of the Day", "Kazuo Ishiguro"), ("Circe", "Madeline Miller"), ("Dune", "Frank Herbert"),
     ("Beloved", "Toni Morrison"), ("Stoner", "John Williams")],
    ["I'm halfway through {0} by {1}, it's so gripping.",
     "Started {0} on the train, {1} really knows how to write."],
    [("Which novel is {first} reading at the moment?", "this"),
     ("Which author's work has {first} been enjoying?", "this"),
     ("What does {first} think of {0}?", "this")],
)  # fmt: skip
ALLERGY = (
    ["peanuts", "shellfish", "sesame", "kiwi fruit", "gluten", "eggs", "soy", "mustard"],
    ["The doctor confirmed I'm allergic to {0}, so no more of that for me.",
     "Test results came back: a {0} allergy, which explains a lot."],
    [("What food must {first} avoid for health reasons?", "this"),
     ("Which ingredient gives {first} a bad reaction?", "this"),
     ("What did the doctor tell {first} about {0}?", "this")],
)  # fmt: skip
FOOD = (
    ["ramen", "shakshuka", "pierogi", "pad thai", "lasagna", "pho", "tacos al pastor", "biryani", "risotto", "dumplings"],
    ["Honestly {0} is my favorite comfort food.",
     "I've gone off everything else lately; these days I'm obsessed with {0}."],
    [("What is {first}'s favourite dish these days?", "latest"),
     ("Which dish did {first} love before their tastes changed?", "earlier"),
     ("How does {first} feel about {0} these days?", "latest")],
)  # fmt: skip
RACE = (
    [("Rotterdam", "1:52"), ("Chicago", "2:05"), ("Porto", "1:48"), ("Dublin", "2:11"), ("Vancouver", "1:59"),
     ("Seville", "1:44"), ("Oslo", "2:02"), ("Boston", "1:55")],
    ["I ran my first half marathon in {0} and finished in {1}!",
     "Crossed the half marathon finish line in {0} with a time of {1}."],
    [("Which running event did {first} complete, and where?", "this"),
     ("How long did {first} take to finish the long-distance race?", "this"),
     ("How did {first}'s race in {0} go?", "this")],
)  # fmt: skip
FACTS = {
    "pet": PET, "job": JOB, "city": CITY, "sibling": SIBLING, "trip": TRIP, "instrument": INSTRUMENT,
    "car": CAR, "birthday": BIRTHDAY, "book": BOOK, "allergy": ALLERGY, "food": FOOD, "race": RACE,
}  # fmt: skip
CHANGING = ("job", "city", "food")  # said twice, the second time a new value


@dataclass
class Session:
    persona: str
    index: int  # of the persona's sessions, in time order
    name: str
    messages: list[tuple[str, str]] = field(default_factory=list)  # (role, content)

    @property
    def key(self) -> str:
        return f"{self.persona}/{self.index}"


@dataclass(frozen=True)
class Question:
    text: str
    evidence: tuple[str, ...]  # Session.key of the sessions that hold the answer
    kind: str
    style: str = ""  # how it is worded (benchmarks/dialogues.py STYLES); "" for this generator's


@dataclass
class Corpus:
    sessions: list[Session]
    questions: list[Question]


def generate(
    personas: int = 4,
    sessions_per_persona: int = 24,
    turns: int = 22,
    seed: int = 7,
    naming: Literal["persona", "numbered"] = "persona",
) -> Corpus:
    rng = random.Random(seed)
    sessions: list[Session] = []
    questions: list[Question] = []
    for name in PERSONAS[:personas]:
        first = name.split()[0]
        prefix = f"{first} - " if naming == "persona" else ""
        own = [Session(name, i, f"{prefix}chat {i + 1}") for i in range(sessions_per_persona)]
        kinds = list(FACTS)
        # Each fact in its own session(s); a changing fact's second telling comes later.
        # Each fact in its own session while there are enough; a changing fact's second telling
        # comes later (the slots are sorted, and the later tellings take the last ones).
        needed = len(kinds) + len(CHANGING)
        sessions_range = range(sessions_per_persona)
        if sessions_per_persona >= needed:
            slots = sorted(rng.sample(sessions_range, needed))
        else:  # a small corpus: sessions hold several facts
            slots = sorted(rng.choices(sessions_range, k=needed))
        placed: dict[int, list[str]] = {}
        first_of = dict(zip(kinds, slots, strict=False))
        later = dict(zip(CHANGING, slots[len(kinds) :], strict=True))
        for kind in kinds:
            values, statements, asks = FACTS[kind]
            picked = rng.sample(values, 2)
            telling = [(first_of[kind], picked[0])]
            if kind in CHANGING and later[kind] > first_of[kind]:
                telling.append((later[kind], picked[1]))
            for session_index, value in telling:
                args = value if isinstance(value, tuple) else (value,)
                placed.setdefault(session_index, []).append(rng.choice(statements).format(*args))
            for ask, which in asks:
                if which == "earlier" and len(telling) < 2:
                    continue
                evidence, value = telling[-1] if which in ("latest", "this") else telling[0]
                args = value if isinstance(value, tuple) else (value,)
                questions.append(Question(ask.format(*args, first=first), (own[evidence].key,), kind))
        for session in own:
            _fill(rng, session, first, placed.get(session.index, []), turns)
        sessions += own
    return Corpus(sessions, questions)


def _fill(rng: random.Random, session: Session, first: str, facts: list[str], turns: int) -> None:
    topic = rng.choice(list(TOPICS))
    exchanges = rng.sample(TOPICS[topic], len(TOPICS[topic]))
    other = rng.choice([t for t in TOPICS if t != topic])
    exchanges += rng.sample(TOPICS[other], 3)
    pairs = [(f"Hi, it's {first} again.", "Hello! Good to hear from you. What can I help with today?")]
    while len(pairs) * 2 < turns - 2 * len(facts) and exchanges:
        pairs.append(exchanges.pop(0))
        if rng.random() < 0.25:
            pairs.append(rng.choice(SMALL_TALK))
    for fact in facts:
        reply = rng.choice(
            ["Oh, that's lovely news, congratulations!", "How exciting, thanks for telling me.",
             "That's a big change, I hope it goes well.", "Nice! I'll remember that."]
        )  # fmt: skip
        opening = fact if fact.startswith("I ") else fact[0].lower() + fact[1:]
        pairs.insert(rng.randrange(1, len(pairs) + 1), (f"By the way, {opening}", reply))
    for user, assistant in pairs:
        session.messages += [("user", user), ("assistant", assistant)]


# Questions no session answers, each kind in two halves: [0] to tune on, [1] held out.
OFF_TOPIC = (
    ["What is the tallest mountain in Africa?", "How many moons does Jupiter have?",
     "Who wrote the Odyssey?", "What is the chemical symbol for tungsten?",
     "Which river flows through Budapest?", "How do submarines stay submerged?",
     "What year did the Berlin Wall fall?", "How does a nuclear reactor make electricity?"],
    ["What is the population of Mongolia?", "Who invented the printing press?",
     "How do I renew a passport?", "What are the rules of cricket?",
     "Why is the sky blue?", "Which planet has the longest day?",
     "How do vaccines train the immune system?", "What language is spoken in Andorra?"],
)  # fmt: skip
UNTOLD = (
    ["Which football club does {first} support?", "Where did {first} go to university?",
     "What is {first}'s blood type?", "How many children does {first} have?",
     "What is the name of {first}'s dentist?", "Which political party does {first} vote for?"],
    ["What is {first}'s shoe size?", "Does {first} speak any foreign languages?",
     "What was {first}'s first phone?", "Which video games does {first} play?",
     "What is {first}'s favourite colour?", "Who is {first}'s best friend from school?"],
)  # fmt: skip
STRANGERS = (["Zoe", "Viktor", "Leila"], ["Mateo", "Ingrid", "Dev"])
UNRELATED_KINDS = ("off-topic", "untold", "stranger")


def unrelated_questions(corpus: Corpus, seed: int, half: int) -> list[Question]:
    """Questions no session of the corpus answers (no evidence), of each kind in UNRELATED_KINDS,
    from their sentences' `half` (0: to tune on, 1: held out). A stranger's question names a
    value (a pet's name, an employer) that no session mentions."""
    rng = random.Random(seed)
    firsts = list(dict.fromkeys(session.persona.split()[0] for session in corpus.sessions))
    said = " ".join(content for session in corpus.sessions for _, content in session.messages)
    questions = [Question(text, (), "off-topic") for text in OFF_TOPIC[half]]
    questions += [Question(ask.format(first=first), (), "untold") for ask in UNTOLD[half] for first in firsts]
    for values, _, asks in FACTS.values():
        unsaid = [v for v in values if (v if isinstance(v, tuple) else (v,))[0] not in said]
        for ask, _ in asks:
            value = rng.choice(unsaid or values)
            args = value if isinstance(value, tuple) else (value,)
            stranger = rng.choice(STRANGERS[half])
            questions.append(Question(ask.format(*args, first=stranger), (), "stranger"))
    return questions
