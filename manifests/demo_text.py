"""A deterministic English sentence generator for the spoken demo corpus (vocabulary of over 1000 words).

Sentences come from a handful of grammatical templates filled from word lists, so that a speech recogniser
trained on the corpus meets a realistic spread of words, lengths and letter statistics.
"""

import random
from typing import List

NOUNS = """
apple anchor animal answer arm army artist autumn baby bag ball band bank basket bath beach bean bear bed bell
belt bench bird blanket boat body bone book boot bottle bowl box boy branch bread bridge brother brush bucket
builder bus butter button cabin cake camera camp candle cap captain car card carpet cart castle cat cave chain
chair chalk cheese chicken child church circle city clock cloud coat coffee coin collar corner cottage cousin cow
crowd crown cup curtain dancer daughter desk dinner doctor dog doll door dragon drawer dream dress driver drum duck
eagle earth egg engine evening eye face factory farm farmer father feather fence field finger fire fish flag flower
fog forest fork fountain fox friend frog garden gate giant girl glass glove goat gold grass guard guest guitar hall
hammer hand harbor hat hawk heart hill horse hospital hotel house hunter island jacket jar jewel judge kettle key
king kitchen kite knife ladder lake lamp lawyer leaf lemon letter library lion lizard lock machine map market mayor
meadow merchant message meeting mirror monkey moon morning mother mountain mouse mouth museum nail needle nest net
newspaper night nurse ocean office officer orange owl painter palace paper parcel park parrot path pencil pepper
piano picture pilot pillow pipe planet plate pocket poet pond potato prince princess prisoner queen rabbit radio
rain river road robot rock roof room rope rose sailor salt sand school scientist sea season secret servant shadow
sheep shell ship shirt shoe shop shoulder singer sister sky snake snow soldier song soup spoon spring square star
station stone storm story stove street student sugar summer sun supper swan sword table tailor teacher teapot tent
theater thread throne ticket tiger tower town toy train tree truck tunnel turtle umbrella uncle valley vase village
violin visitor voice wagon wall watch water wave whale wheel whistle window wind winter wizard wolf woman worker
writer yard blossom canyon cellar chimney compass cushion desert engineer feast festival glacier helmet lantern
lighthouse meadowlark orchard pebble puzzle quilt saddle scarf shovel sparrow tractor trumpet volcano waterfall
""".split()

VERBS = [  # (base, past)
    ("accept", "accepted"), ("admire", "admired"), ("answer", "answered"), ("arrange", "arranged"),
    ("ask", "asked"), ("bake", "baked"), ("borrow", "borrowed"), ("build", "built"), ("buy", "bought"),
    ("call", "called"), ("carry", "carried"), ("catch", "caught"), ("chase", "chased"), ("check", "checked"),
    ("choose", "chose"), ("clean", "cleaned"), ("climb", "climbed"), ("close", "closed"), ("collect", "collected"),
    ("cook", "cooked"), ("count", "counted"), ("cover", "covered"), ("cross", "crossed"), ("cut", "cut"),
    ("deliver", "delivered"), ("describe", "described"), ("discover", "discovered"), ("draw", "drew"),
    ("drink", "drank"), ("drive", "drove"), ("drop", "dropped"), ("eat", "ate"), ("enjoy", "enjoyed"),
    ("explain", "explained"), ("explore", "explored"), ("feed", "fed"), ("fill", "filled"), ("find", "found"),
    ("fix", "fixed"), ("fold", "folded"), ("follow", "followed"), ("forget", "forgot"), ("gather", "gathered"),
    ("give", "gave"), ("greet", "greeted"), ("guard", "guarded"), ("guess", "guessed"), ("hang", "hung"),
    ("help", "helped"), ("hide", "hid"), ("hold", "held"), ("hunt", "hunted"), ("imagine", "imagined"),
    ("join", "joined"), ("keep", "kept"), ("kick", "kicked"), ("kiss", "kissed"), ("knock", "knocked"),
    ("leave", "left"), ("lift", "lifted"), ("like", "liked"), ("load", "loaded"), ("lose", "lost"),
    ("love", "loved"), ("make", "made"), ("measure", "measured"), ("meet", "met"), ("mend", "mended"),
    ("miss", "missed"), ("move", "moved"), ("notice", "noticed"), ("open", "opened"), ("order", "ordered"),
    ("pack", "packed"), ("paint", "painted"), ("pass", "passed"), ("pick", "picked"), ("plant", "planted"),
    ("play", "played"), ("polish", "polished"), ("pour", "poured"), ("prepare", "prepared"), ("protect", "protected"),
    ("pull", "pulled"), ("push", "pushed"), ("read", "read"), ("receive", "received"), ("remember", "remembered"),
    ("repair", "repaired"), ("rescue", "rescued"), ("ride", "rode"), ("ring", "rang"), ("save", "saved"),
    ("see", "saw"), ("sell", "sold"), ("send", "sent"), ("share", "shared"), ("shake", "shook"), ("show", "showed"),
    ("sing", "sang"), ("sketch", "sketched"), ("sort", "sorted"), ("steal", "stole"), ("study", "studied"),
    ("take", "took"), ("teach", "taught"), ("test", "tested"), ("thank", "thanked"), ("throw", "threw"),
    ("touch", "touched"), ("trade", "traded"), ("visit", "visited"), ("wake", "woke"), ("wash", "washed"),
    ("watch", "watched"), ("wear", "wore"), ("weigh", "weighed"), ("win", "won"), ("wrap", "wrapped"),
    ("write", "wrote"), ("bring", "brought"), ("dig", "dug"), ("fetch", "fetched"), ("light", "lit"),
    ("mark", "marked"), ("offer", "offered"), ("print", "printed"), ("reach", "reached"), ("seal", "sealed"),
    ("spot", "spotted"), ("stack", "stacked"), ("stir", "stirred"), ("sweep", "swept"), ("tie", "tied"),
]
INTRANSITIVE = [  # (base, past)
    ("arrive", "arrived"), ("breathe", "breathed"), ("cry", "cried"), ("dance", "danced"), ("disappear", "disappeared"),
    ("fall", "fell"), ("float", "floated"), ("fly", "flew"), ("grow", "grew"), ("hurry", "hurried"),
    ("jump", "jumped"), ("kneel", "knelt"), ("laugh", "laughed"), ("listen", "listened"), ("rest", "rested"),
    ("run", "ran"), ("shine", "shone"), ("shiver", "shivered"), ("shout", "shouted"), ("sleep", "slept"),
    ("smile", "smiled"), ("sneeze", "sneezed"), ("speak", "spoke"), ("stand", "stood"), ("stay", "stayed"),
    ("swim", "swam"), ("travel", "traveled"), ("wait", "waited"), ("walk", "walked"), ("wander", "wandered"),
    ("whisper", "whispered"), ("work", "worked"), ("yawn", "yawned"), ("sit", "sat"), ("sail", "sailed"),
]
ADJECTIVES = """
able ancient angry bitter black blue bold brave bright brilliant broad broken brown busy calm careful cheap cheerful
clean clever cold cool crooked cruel curious damp dark deep delicate dirty distant dry dusty eager early easy empty
enormous faint famous fancy fast fierce flat fresh friendly frozen funny gentle giant glad golden good graceful
grand gray great green happy hard heavy helpful hidden high hollow honest hot huge humble hungry icy important kind
large late lazy light little lively lonely long loud lovely lucky magic mighty modern narrow neat nervous new nice
noble noisy old orange pale patient perfect pink plain pleasant polite poor precious pretty proud purple quick quiet
rapid rare red rich ripe rough round royal rusty sad safe salty scary sharp shiny short shy silent silver simple
slow small smooth soft sour splendid steady steep sticky strange strong sudden sunny sweet tall tame tender thick
thin tiny tired tough ugly warm weak wealthy wet white wide wild windy wise wooden worried yellow young brief
crisp fragile gloomy grumpy hasty jolly juicy misty muddy rainy shallow sleepy snowy spotted striped velvet
""".split()
ADVERBS = """
quickly slowly quietly loudly carefully happily sadly gently suddenly proudly bravely calmly eagerly easily
finally gladly kindly nearly neatly openly patiently politely rarely safely seldom softly sometimes often today
tomorrow yesterday early later again always never almost rather quite very soon together alone outside inside
""".split()
NAMES = """
adam alice amelia arthur bella ben carl charlotte clara daniel david diana edward ella emily emma frank george
grace hannah harry helen henry isaac jack james jane john julia kate laura leo lily lucas lucy maria mark martha
mary max mia nancy noah oliver olivia oscar paul peter rachel robert rose ruth sam sarah simon sophie thomas victor
walter william
""".split()
NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty hundred".split()
PLACES = """
london paris boston denver chicago dallas seattle berlin madrid rome vienna dublin oslo cairo sydney tokyo canada
mexico spain france italy egypt india china brazil kenya norway sweden
""".split()
PREPOSITIONS = "near behind under above beside inside across along beyond toward past around".split()
CONNECTIVES = ["because", "while", "after", "before", "although", "until", "when", "since"]


def vocabulary() -> List[str]:
    """Every word the generator can produce, sorted."""
    words = set(NOUNS + ADJECTIVES + ADVERBS + NAMES + NUMBERS + PLACES + PREPOSITIONS + CONNECTIVES)
    for pairs in (VERBS, INTRANSITIVE):
        for base, past in pairs:
            words.update((base, past))
    words.update("the a and to in of was were will did not could would is are it there with from at by".split())
    words.update("he she they we many some every last next their our his her on".split())
    return sorted(words)


class SentenceGenerator:
    """Draws sentences from templates; the same seed gives the same sentences."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def _pick(self, words):
        return self.rng.choice(words)

    def _noun_phrase(self) -> str:
        det = self._pick(["the", "a", "the", "their", "our", "his", "her", "every"])
        if det == "a" and self.rng.random() < 0.5:
            return f"a {self._pick(ADJECTIVES)} {self._pick(NOUNS)}"
        if self.rng.random() < 0.5:
            return f"{det} {self._pick(ADJECTIVES)} {self._pick(NOUNS)}"
        return f"{det} {self._pick(NOUNS)}"

    def _clause(self) -> str:
        subject = self._pick(NAMES) if self.rng.random() < 0.4 else self._noun_phrase()
        base, past = self._pick(VERBS)
        roll = self.rng.random()
        if roll < 0.3:
            return f"{subject} {past} {self._noun_phrase()} {self._pick(PREPOSITIONS)} {self._noun_phrase()}"
        if roll < 0.45:
            return f"{subject} will {base} {self._noun_phrase()} {self._pick(ADVERBS)}"
        if roll < 0.6:
            ibase, ipast = self._pick(INTRANSITIVE)
            return f"{subject} {ipast} {self._pick(ADVERBS)} in {self._pick(PLACES)}"
        if roll < 0.7:
            return f"{subject} did not {base} {self._pick(NUMBERS)} {self._pick(NOUNS)}"
        if roll < 0.8:
            return f"{subject} was {self._pick(ADJECTIVES)} and {self._pick(ADJECTIVES)}"
        if roll < 0.9:
            ibase, _ = self._pick(INTRANSITIVE)
            return f"{subject} could {ibase} {self._pick(PREPOSITIONS)} {self._noun_phrase()}"
        return f"{subject} {past} {self._noun_phrase()} {self._pick(ADVERBS)}"

    def sentence(self) -> str:
        """One lower-case sentence of about 4 to 20 words, without punctuation."""
        text = self._clause()
        if self.rng.random() < 0.3:
            text = f"{text} {self._pick(CONNECTIVES)} {self._clause()}"
        return text
