// Writes the query/candidate sets of the fidelity goldens: 60 sets mixing
// languages, scripts and lengths (one word to a few hundred tokens), chosen by
// a fixed linear congruential generator so the file is reproducible.
// usage: node sets.mjs > sets.json
const queries = [
  'what is the capital of france', 'how do vaccines train the immune system', 'best way to learn go programming',
  'symptoms of vitamin d deficiency', 'who wrote the origin of species', 'how does a heat pump work in winter',
  'Wie hoch ist der Eiffelturm?', 'Quelle est la population de Lyon ?', '¿Cuándo se fundó la ciudad de Buenos Aires?',
  'Какая самая длинная река в Европе?', '東京タワーの高さは？', '北京的人口是多少', 'ما هي عاصمة مصر',
  'rerank documents with a cross encoder', 'python list comprehension vs generator expression',
  'why is the sky blue', 'price of bitcoin in 2017', 'COVID-19 incubation period', 'how many bones in the human body',
  'tips for running a marathon under 4 hours', 'what does HTTP 429 mean', 'Kafka vs RabbitMQ for event streaming',
  'q', 'climate change effects on coral reefs', 'recipe for sourdough bread', 'distance from earth to the moon in km',
  'Was ist die Relativitätstheorie?', 'meilleur fromage pour une raclette', 'history of the roman empire decline',
  'how to fix a leaking faucet', 'état civil mariage à l\'étranger',
];
const sentences = [
  'Paris is the capital and most populous city of France.',
  'Berlin is the capital of Germany and its largest city by population.',
  'The Eiffel Tower is 330 metres tall and was completed in 1889.',
  'Der Eiffelturm ist 330 Meter hoch und wurde 1889 fertiggestellt.',
  'La tour Eiffel mesure 330 mètres et a été achevée en 1889.',
  'Lyon compte environ 520 000 habitants dans la commune.',
  'Buenos Aires fue fundada por primera vez en 1536 por Pedro de Mendoza.',
  'Волга — самая длинная река в Европе, её длина 3530 км.',
  '東京タワーは高さ333メートルの電波塔です。',
  '北京市常住人口约为2180万人。',
  'القاهرة هي عاصمة جمهورية مصر العربية وأكبر مدنها.',
  'Vaccines expose the immune system to a harmless piece of a pathogen so it can build memory cells.',
  'Go is a statically typed, compiled language designed at Google; the tour and Effective Go are good starts.',
  'Vitamin D deficiency can cause fatigue, bone pain, muscle weakness and mood changes.',
  'Charles Darwin published On the Origin of Species in 1859.',
  'A heat pump moves heat from the cold outside air into the house using a refrigerant cycle.',
  'A cross-encoder reads the query and the document together and outputs a relevance score.',
  'List comprehensions build the whole list in memory, generator expressions yield items lazily.',
  'Rayleigh scattering makes shorter blue wavelengths scatter more than red ones.',
  'Bitcoin peaked near 20,000 US dollars in December 2017.',
  'The incubation period of COVID-19 is typically 2 to 14 days, with a median of about 5 days.',
  'An adult human skeleton has 206 bones.',
  'Train with long slow runs, add tempo work, and taper for two weeks before race day.',
  'HTTP 429 Too Many Requests means the client has sent too many requests in a given time; retry after the Retry-After delay.',
  'Kafka keeps an ordered, replayable log; RabbitMQ routes messages to queues and deletes them once acknowledged.',
  'Rising sea temperatures cause coral bleaching, when corals expel the algae living in their tissues.',
  'Mix flour, water and salt with an active starter, fold every half hour, proof overnight and bake at 250 °C.',
  'The average distance from the Earth to the Moon is about 384,400 km.',
  'Die spezielle Relativitätstheorie beschreibt Raum und Zeit für gleichförmig bewegte Beobachter.',
  'Le fromage à raclette de Savoie fond bien et garde une texture crémeuse.',
  'The Western Roman Empire declined through economic crisis, invasions and political instability until 476 AD.',
  'Turn off the water supply, remove the handle, and replace the worn washer or cartridge.',
  'The cat sat on the mat.',
  'bananas are yellow and rich in potassium',
  'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.',
  'func main() { fmt.Println("hello, world") }',
  'SELECT id, score FROM results WHERE score > 0.5 ORDER BY score DESC LIMIT 10;',
  'Call +1 (555) 010-2030 before 09:30, or e-mail support@example.org.',
  '🚀 Launch day! 🎉 Thanks to everyone who helped.',
  'naïve café déjà vu — coöperate, façade, Ångström, Straße',
  'ÀÉÎÕÜ àéîõü ÇÑ çñ',
  'In 1969, Apollo 11 landed on the Moon; Neil Armstrong and Buzz Aldrin walked on the surface.',
  'The mitochondrion is the powerhouse of the cell.',
  'Transcrição de registo civil de casamento celebrado no estrangeiro.',
  'Il matrimonio celebrato all\'estero deve essere trascritto nei registri dello stato civile.',
  'Kyiv, Kharkiv and Odesa are among the largest cities of Ukraine.',
  'Ελλάδα είναι χώρα της νοτιοανατολικής Ευρώπης.',
  'हिंदी भारत की आधिकारिक भाषाओं में से एक है।',
  '한국의 수도는 서울입니다.',
  'Die Donau fließt durch zehn Länder und mündet ins Schwarze Meer.',
];
let state = 20260522n;
function rnd(n) {
  state = (state * 6364136223846793005n + 1442695040888963407n) & ((1n << 64n) - 1n);
  return Number((state >> 33n) % BigInt(n));
}
const sets = [];
for (let i = 0; i < 60; i++) {
  const query = queries[i % queries.length];
  const k = i === 0 ? 1 : 1 + rnd(12);
  const candidates = [];
  for (let j = 0; j < k; j++) {
    const kind = rnd(10);
    let doc;
    if (kind === 0) {
      doc = sentences[rnd(sentences.length)].split(' ')[0];
    } else if (kind <= 6) {
      doc = sentences[rnd(sentences.length)];
    } else if (kind <= 8) {
      const m = 2 + rnd(5);
      doc = Array.from({ length: m }, () => sentences[rnd(sentences.length)]).join(' ');
    } else {
      const m = 6 + rnd(7);
      doc = Array.from({ length: m }, () => sentences[rnd(sentences.length)]).join(' ');
    }
    candidates.push(doc);
  }
  sets.push({ query, candidates });
}
// Edge cases: a whitespace-only document (not an empty one: transformers.js treats
// an empty text_pair as no pair, unlike Hugging Face tokenizers), duplicates, a long query.
sets.push({ query: 'what is the capital of france', candidates: ['   ', 'Paris is the capital and most populous city of France.', 'Paris is the capital and most populous city of France.'] });
sets.push({ query: sentences.slice(0, 6).join(' '), candidates: [sentences[0], sentences[7], sentences[12]] });
process.stdout.write(JSON.stringify(sets, null, 1) + '\n');
