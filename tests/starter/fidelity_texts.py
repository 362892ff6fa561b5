"""Hand-written Chinese probe texts for the starter-model fidelity check (no dataset content).

The texts are assembled deterministically from the phrases below so that they cover what a tokenizer port
tends to get wrong: short queries, long passages (some beyond one 512-token window), full-width and
half-width punctuation, full-width letters and digits, numbers, Latin words mixed into Chinese, emoji
(including ZWJ sequences and flags), traditional characters, rare characters, and odd whitespace.
"""

from __future__ import annotations

import random

SENTENCES = (
    "今天北京的天气晴朗，最高气温二十八度。",
    "这家餐厅的红烧肉味道很正宗，价格也比较实惠。",
    "深度学习模型需要大量的标注数据进行训练。",
    "医生建议感冒期间多喝水，注意休息。",
    "上海地铁十四号线已经全线开通运营。",
    "我们公司正在招聘有经验的前端开发工程师。",
    "这本小说讲述了一个关于成长和友情的故事。",
    "长江是中国最长的河流，全长约六千三百公里。",
    "周末我打算和朋友一起去爬香山看红叶。",
    "央行宣布下调存款准备金率零点五个百分点。",
    "新能源汽车的销量在过去一年里大幅增长。",
    "孩子发烧超过三十九度应该及时去医院就诊。",
    "这款手机的电池续航时间比上一代提升了不少。",
    "图书馆每周一闭馆，其他时间正常开放。",
    "学习一门外语最重要的是坚持每天练习。",
    "故宫博物院是世界上规模最大的古代宫殿建筑群之一。",
    "外卖送得很快，但是汤洒了一半，体验不太好。",
    "根据合同第十二条的约定，违约方应当承担赔偿责任。",
    "研究人员发现适量运动可以改善睡眠质量。",
    "春节期间高速公路对小型客车免收通行费。",
    "这个问题可以用动态规划的方法来解决。",
    "熊猫主要以竹子为食，每天要吃十几公斤。",
    "股市今天小幅高开，随后震荡走低。",
    "请在提交申请前仔细核对个人信息。",
    "西湖的美景吸引了来自世界各地的游客。",
    "高血压患者应该减少食盐的摄入量。",
    "这部电影的特效做得非常逼真，剧情却有些拖沓。",
    "机器翻译的质量近年来有了明显的提升。",
    "他每天早上六点起床，先跑步再吃早饭。",
    "办理护照需要携带身份证和近期免冠照片。",
)

QUERIES = (
    "怎么做红烧肉",
    "北京明天会下雨吗",
    "感冒了吃什么药好得快",
    "如何学习编程",
    "上海有哪些好玩的地方",
    "新能源汽车补贴政策",
    "孩子发烧怎么办",
    "手机充电很慢是什么原因",
    "护照办理需要多长时间",
    "高血压不能吃什么",
    "长江有多长",
    "深度学习和机器学习的区别",
    "熊猫吃什么",
    "存款准备金率是什么意思",
    "故宫门票多少钱",
    "违约金最高能收多少",
    "怎样提高睡眠质量",
    "春节高速免费吗",
    "动态规划入门教程",
    "西湖十景有哪些",
)

LATIN = (
    "iPhone 15 Pro Max",
    "Python",
    "PyTorch 2.3",
    "GPU",
    "BERT",
    "ChatGPT",
    "WiFi",
    "USB-C",
    "NBA",
    "CPU占用100%",
    "Windows 11",
    "e-mail",
    "COVID-19",
    "Hello World",
    "k8s",
)

EMOJI = ("😀", "🎉", "👍", "🔥", "❤️", "🇨🇳", "👨‍👩‍👧", "🚀", "😂😂😂", "🙏🏻", "☕", "✅", "1️⃣")

NUMBERS = (
    "2024年3月15日",
    "￥1,299.00",
    "35.6%",
    "第3季度",
    "13800138000",
    "10:30",
    "3.1415926",
    "-17℃",
    "1/2",
    "No.8",
    "１２３４５",
    "ＡＢＣ",
    "Ｗｉｎｄｏｗｓ",
)

PUNCTUATION = ("，", "。", "！", "？", "；", "：", "、", "……", "——", "～", "·", "（", "）")
BRACKETS = (("《", "》"), ("“", "”"), ("「", "」"), ("【", "】"), ("(", ")"), ("‘", "’"), ('"', '"'))
SPACES = (" ", "  ", "\t", "\n", "\u3000", "\u00a0", " \n ", "\r\n", "\u200b", "   ")
RARE = ("龘", "𠮷", "𪚥", "犇", "靐", "齉", "𰻞", "囧", "槑", "丼")
TRADITIONAL = (
    "這個問題真的很難回答。",
    "臺灣的夜市小吃非常有名。",
    "請問圖書館幾點開門？",
    "電腦螢幕突然變黑了。",
)

EDGE_CASES = (
    "",
    " ",
    "？",
    "你好",
    "  前后都有空格  ",
    "\t制表符\t分隔\t",
    "第一行\n第二行\n\n第四行",
    "全角空格\u3000分隔\u3000文本",
    "ｈｔｔｐｓ：／／ｗｗｗ．ｅｘａｍｐｌｅ．ｃｏｍ",
    "https://www.example.com/path?q=中文&lang=zh",
    "价格：￥９９．９元（含税）",
    "😀😀😀",
    "𠮷野家的牛丼",
    "👨‍👩‍👧‍👦一家人",
    "ａｂｃ　ＸＹＺ　１２３",
    "零宽\u200b空格\u200d连接\u200c符",
    "mixed中英文mixed",
    "A股、B股和H股",
    "①②③④⑤",
    "Ⅰ、Ⅱ、Ⅲ",
    "㈠㈡㈢",
    "温度在25℃～30℃之间",
    "㎡和㎞",
    "ﬁnancial",
)


def fidelity_texts(n: int = 300, seed: int = 0) -> list[str]:
    """``n`` distinct, deterministic probe texts (the edge cases first, then a seeded mix).

    Args:
        n: How many texts to return.
        seed: Seed of the mix, so reports are reproducible.
    """
    rng = random.Random(seed)
    makers = (_short_query, _passage, _long_passage, _punctuated, _mixed_latin, _with_emoji, _whitespace)
    texts = dict.fromkeys(EDGE_CASES[:n])
    attempt = 0
    while len(texts) < n:
        texts.setdefault(makers[attempt % len(makers)](rng))
        attempt += 1
    return list(texts)


def _short_query(rng: random.Random) -> str:
    query = rng.choice(QUERIES)
    return query + rng.choice(("", "？", "?", "呢", "啊？", " 2024"))


def _passage(rng: random.Random) -> str:
    parts = rng.sample(SENTENCES, rng.randint(2, 6))
    if rng.random() < 0.3:
        parts.insert(rng.randrange(len(parts) + 1), rng.choice(TRADITIONAL))
    if rng.random() < 0.3:
        parts.append(rng.choice(RARE) + rng.choice(SENTENCES))
    return "".join(parts)


def _long_passage(rng: random.Random) -> str:
    # About one in seven runs past one 512-token window, so the engine's sliding windows are exercised too.
    count = 50 if rng.random() < 0.15 else rng.randint(8, 16)
    return "".join(rng.choice(SENTENCES) for _ in range(count))


def _punctuated(rng: random.Random) -> str:
    left, right = rng.choice(BRACKETS)
    title = rng.choice(QUERIES)
    return f"{left}{title}{right}{rng.choice(PUNCTUATION)}{rng.choice(SENTENCES)}{rng.choice(NUMBERS)}"


def _mixed_latin(rng: random.Random) -> str:
    word, number = rng.choice(LATIN), rng.choice(NUMBERS)
    sentence = rng.choice(SENTENCES)
    cut = rng.randrange(1, len(sentence))
    return f"{sentence[:cut]}{word}{sentence[cut:]}{number}"


def _with_emoji(rng: random.Random) -> str:
    sentence = rng.choice(SENTENCES)
    cut = rng.randrange(len(sentence) + 1)
    return sentence[:cut] + rng.choice(EMOJI) + sentence[cut:] + rng.choice(EMOJI)


def _whitespace(rng: random.Random) -> str:
    first, second = rng.sample(QUERIES, 2)
    lead = rng.choice(("", " ", "\u3000"))
    trail = rng.choice(("", " ", "\n", "  "))
    return f"{lead}{first}{rng.choice(SPACES)}{second}{rng.choice(SPACES)}{rng.choice(SENTENCES)}{trail}"
