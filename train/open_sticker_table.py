"""Reviewed label tables for the open sticker corpus (train/build_open_stickers.py).

EMOJI_EMOTIONS maps an emoji's CLDR English name (as `emoji.demojize` spells it, without colons;
a `man_` / `woman_` prefix is looked up without it) to emotion keys of the paper's 30 classes
(stickerclip/labels.py). Emoji not listed here carry the emotion "other". Each entry was chosen by
what the face or gesture is used to say in a chat, not by its literal picture.

PHRASES are captions rendered on stickers (the OCR text), each with the emotions it conveys.
"""

_E = """
grinning_face: smiling excited
grinning_face_with_big_eyes: smiling excited
grinning_face_with_smiling_eyes: smiling excited
beaming_face_with_smiling_eyes: smiling proud
grinning_squinting_face: funny excited
grinning_face_with_sweat: embarrassed smiling
rolling_on_the_floor_laughing: funny excited
face_with_tears_of_joy: funny excited
slightly_smiling_face: smiling perfunctory
upside-down_face: naughty funny
melting_face: embarrassed painful
winking_face: naughty smiling
smiling_face_with_smiling_eyes: smiling shy
smiling_face_with_halo: smiling proud
smiling_face_with_hearts: intimate smiling
smiling_face_with_heart-eyes: admiring intimate
star-struck: admiring excited
face_blowing_a_kiss: intimate naughty
kissing_face: intimate
smiling_face: smiling relaxed
kissing_face_with_closed_eyes: intimate shy
kissing_face_with_smiling_eyes: intimate smiling
smiling_face_with_tear: poor smiling
face_savoring_food: anticipating naughty
face_with_tongue: naughty
winking_face_with_tongue: naughty funny
zany_face: funny naughty
squinting_face_with_tongue: naughty funny
money-mouth_face: envious anticipating
smiling_face_with_open_hands: comforting smiling
face_with_hand_over_mouth: funny shy
face_with_open_eyes_and_hand_over_mouth: shocked
face_with_peeking_eye: shy anticipating
shushing_face: naughty
thinking_face: confused
saluting_face: agreeing admiring
zipper-mouth_face: perfunctory
face_with_raised_eyebrow: confused dissatisfied
neutral_face: perfunctory
expressionless_face: perfunctory dissatisfied
face_without_mouth: embarrassed
dotted_line_face: embarrassed
face_in_clouds: confused
smirking_face: naughty proud
unamused_face: dissatisfied
face_with_rolling_eyes: dissatisfied disgusted
grimacing_face: embarrassed
face_exhaling: relaxed
lying_face: naughty
shaking_face: shocked
head_shaking_horizontally: opposing
head_shaking_vertically: agreeing
relieved_face: relaxed
pensive_face: sad
sleepy_face: relaxed
drooling_face: envious anticipating
sleeping_face: relaxed
face_with_medical_mask: painful
face_with_thermometer: painful poor
face_with_head-bandage: painful poor
nauseated_face: disgusted
face_vomiting: disgusted
sneezing_face: painful
hot_face: painful
cold_face: painful
woozy_face: confused
face_with_crossed-out_eyes: shocked painful
face_with_spiral_eyes: confused shocked
exploding_head: shocked
cowboy_hat_face: proud excited
partying_face: excited
disguised_face: funny naughty
smiling_face_with_sunglasses: proud relaxed
nerd_face: proud funny
face_with_monocle: confused
confused_face: confused
face_with_diagonal_mouth: dissatisfied confused
worried_face: afraid
slightly_frowning_face: sad dissatisfied
frowning_face: sad
face_with_open_mouth: shocked
hushed_face: shocked
astonished_face: shocked
flushed_face: embarrassed shy
pleading_face: poor anticipating
face_holding_back_tears: poor sad
frowning_face_with_open_mouth: shocked sad
anguished_face: painful
fearful_face: afraid
anxious_face_with_sweat: afraid
sad_but_relieved_face: sad relaxed
crying_face: sad crying
loudly_crying_face: crying sad
face_screaming_in_fear: afraid shocked
confounded_face: painful
persevering_face: painful
disappointed_face: sad dissatisfied
downcast_face_with_sweat: sad embarrassed
weary_face: painful poor
tired_face: painful
yawning_face: relaxed perfunctory
face_with_steam_from_nose: angry proud
enraged_face: angry
angry_face: angry dissatisfied
face_with_symbols_on_mouth: angry
smiling_face_with_horns: naughty
angry_face_with_horns: angry
skull: shocked funny
pile_of_poo: funny
clown_face: funny
ghost: naughty funny
alien_monster: funny
grinning_cat: smiling excited
grinning_cat_with_smiling_eyes: smiling
cat_with_tears_of_joy: funny
smiling_cat_with_heart-eyes: admiring intimate
cat_with_wry_smile: naughty
kissing_cat: intimate
weary_cat: shocked afraid
crying_cat: crying sad
pouting_cat: angry
see-no-evil_monkey: shy embarrassed
hear-no-evil_monkey: opposing
speak-no-evil_monkey: shocked shy
love_letter: intimate
heart_with_arrow: intimate
sparkling_heart: intimate excited
growing_heart: intimate
beating_heart: intimate excited
revolving_hearts: intimate
two_hearts: intimate
heart_exclamation: intimate
broken_heart: sad painful
heart_on_fire: intimate excited
mending_heart: comforting
red_heart: intimate
pink_heart: intimate
kiss_mark: intimate
hundred_points: agreeing admiring
anger_symbol: angry
collision: shocked
sweat_droplets: embarrassed
dizzy: confused
ZZZ: relaxed
waving_hand: smiling
raised_hand: agreeing
OK_hand: agreeing
pinched_fingers: dissatisfied confused
victory_hand: excited proud
crossed_fingers: anticipating
love-you_gesture: intimate
sign_of_the_horns: excited
call_me_hand: smiling
index_pointing_at_the_viewer: encouraging
middle_finger: angry disgusted
thumbs_up: agreeing encouraging
thumbs_down: opposing dissatisfied
raised_fist: encouraging
oncoming_fist: angry encouraging
clapping_hands: admiring encouraging
raising_hands: excited
heart_hands: intimate thankful
open_hands: comforting
palms_up_together: anticipating
handshake: agreeing thankful
folded_hands: thankful sorry
writing_hand: other
flexed_biceps: encouraging proud
eyes: anticipating confused
biting_lip: shy
person_frowning: sad
person_pouting: dissatisfied angry
person_gesturing_NO: opposing
person_gesturing_OK: agreeing
person_tipping_hand: naughty
person_raising_hand: anticipating
person_bowing: sorry thankful
person_facepalming: embarrassed dissatisfied
person_shrugging: confused perfunctory
person_running: excited
person_in_lotus_position: relaxed
people_hugging: comforting intimate
kiss: intimate
couple_with_heart: intimate
party_popper: excited
confetti_ball: excited
birthday_cake: excited
wrapped_gift: thankful excited
trophy: proud
1st_place_medal: proud
sports_medal: proud admiring
fire: excited
sparkles: excited
glowing_star: admiring
rainbow: relaxed
bouquet: thankful intimate
rose: intimate
wilted_flower: sad
cross_mark: opposing
check_mark_button: agreeing
check_mark: agreeing
red_question_mark: confused
exclamation_question_mark: shocked confused
double_exclamation_mark: shocked
prohibited: opposing
no_entry: opposing
bomb: angry
""".strip()

EMOJI_EMOTIONS: dict[str, list[str]] = {
    name.strip(): keys.split() for name, _, keys in (ln.partition(":") for ln in _E.splitlines())
}

# Caption phrases common on Chinese stickers, with what each says.
PHRASES: dict[str, list[str]] = {
    "快夸夸我": ["proud", "anticipating"], "我最棒": ["proud"], "得意": ["proud", "naughty"],
    "收到": ["agreeing"], "好的": ["agreeing"], "没问题": ["agreeing", "encouraging"],
    "OK": ["agreeing"], "可以": ["agreeing"], "同意": ["agreeing"], "点赞": ["agreeing", "admiring"],
    "晚安": ["relaxed", "comforting"], "早安": ["smiling"], "午安": ["relaxed"],
    "谢谢": ["thankful"], "感谢老板": ["thankful", "funny"], "谢谢你": ["thankful", "intimate"],
    "哈哈哈": ["funny", "excited"], "笑死": ["funny"], "绝了": ["admiring", "funny"],
    "生气": ["angry"], "气死我了": ["angry"], "哼": ["dissatisfied", "angry"], "走开": ["opposing", "angry"],
    "对不起": ["sorry"], "我错了": ["sorry", "poor"], "抱歉": ["sorry"],
    "加油": ["encouraging"], "冲鸭": ["encouraging", "excited"], "你可以的": ["encouraging"],
    "抱抱": ["comforting", "intimate"], "摸摸头": ["comforting"], "别难过": ["comforting"],
    "爱你": ["intimate"], "比心": ["intimate"], "想你了": ["intimate", "sad"], "么么哒": ["intimate", "naughty"],
    "呜呜呜": ["crying", "sad"], "我太难了": ["painful", "poor"], "心累": ["painful"], "委屈": ["poor", "sad"],
    "震惊": ["shocked"], "啊这": ["shocked", "embarrassed"], "吓死我了": ["afraid", "shocked"],
    "害怕": ["afraid"], "救命": ["afraid", "shocked"],
    "???": ["confused"], "什么情况": ["confused"], "我不懂": ["confused"], "嗯？": ["confused"],
    "害羞": ["shy"], "人家害羞啦": ["shy"], "不好意思": ["shy", "sorry"],
    "尴尬": ["embarrassed"], "告辞": ["embarrassed", "perfunctory"], "溜了溜了": ["naughty", "embarrassed"],
    "嗯嗯": ["perfunctory", "agreeing"], "哦": ["perfunctory"], "随便": ["perfunctory"], "呵呵": ["perfunctory", "dissatisfied"],
    "羡慕": ["envious"], "酸了": ["envious"], "柠檬精": ["envious", "funny"],
    "厉害了": ["admiring"], "大佬": ["admiring"], "膜拜": ["admiring"], "666": ["admiring", "agreeing"],
    "期待": ["anticipating"], "等等我": ["anticipating"], "在吗": ["anticipating"],
    "嫌弃": ["disgusted"], "好恶心": ["disgusted"], "不要": ["opposing"], "我拒绝": ["opposing"],
    "不服": ["dissatisfied"], "无语": ["dissatisfied", "perfunctory"], "累了": ["painful", "relaxed"],
    "摸鱼中": ["relaxed", "naughty"], "躺平": ["relaxed"], "开心": ["excited", "smiling"],
    "耶": ["excited"], "太好了": ["excited"], "略略略": ["naughty"], "来呀": ["naughty", "anticipating"],
}

# Which phrases suit a sticker whose own emotions are these: a phrase fits when it shares an
# emotion, or when both are in one of these compatible groups.
COMPATIBLE = [
    {"smiling", "excited", "funny", "proud", "naughty", "agreeing", "admiring", "relaxed", "anticipating"},
    {"sad", "crying", "painful", "poor", "sorry", "comforting"},
    {"angry", "dissatisfied", "disgusted", "opposing", "perfunctory"},
    {"shocked", "afraid", "confused", "embarrassed", "shy"},
    {"intimate", "thankful", "comforting", "shy", "smiling"},
    {"encouraging", "agreeing", "proud", "admiring"},
    {"envious", "anticipating", "admiring"},
]

HARMFUL = {"middle_finger", "bomb", "kitchen_knife", "dagger", "pistol", "cigarette", "crossed_swords",
           "face_with_symbols_on_mouth", "skull_and_crossbones", "coffin", "syringe"}
PARODY = {"clown_face", "pile_of_poo", "ogre", "goblin", "alien_monster", "ghost", "skull", "zany_face",
          "disguised_face", "nerd_face", "cowboy_hat_face", "robot", "smiling_face_with_horns",
          "upside-down_face", "woozy_face"}
