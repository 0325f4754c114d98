"""The conversation that tests and benchmarks of recall share: a first message with facts, then short turns that
push it out of a small context, then questions about the facts (each with the word its answer must hold)."""

ADA = "Hi! My name is Ada and I live in Lisbon. My cat is called Pixel."
LOCKER = "My locker number is 4172 and my favourite colour is teal."
FILLER = ["What is 2+2?", "Name a color.", "What is the capital of Italy?", "Tell me a fun fact.",
          "What is the opposite of hot?", "How many days are in a week?", "Name a fruit.", "What is water made of?",
          "Name a musical instrument.", "What is 10 times 3?", "Name a planet.", "What do bees make?"]
QUESTIONS = {
    ADA: [("What is my cat called?", "Pixel"), ("Which city do I live in?", "Lisbon"), ("What is my name?", "Ada")],
    LOCKER: [("What is my locker number?", "4172"), ("What is my favourite colour?", "teal")],
}
