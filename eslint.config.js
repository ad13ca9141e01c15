import js from '@eslint/js';
import nx from '@nx/eslint-plugin';
import tseslint from 'typescript-eslint';
import globals from 'globals';

export default tseslint.config(
  {
    ignores: ['**/dist/**', '**/node_modules/**', '**/.nx/**', '.device/**', 'coverage/**', '**/*.py', '**/__fixtures__/**'],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { ...globals.node } },
  },
  {
    files: ['**/*.ts'],
    plugins: { '@nx': nx },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      // Dependencies point down the design map (DESIGN.md): core at the bottom, the apps on top.
      '@nx/enforce-module-boundaries': [
        'error',
        {
          enforceBuildableLibDependency: false,
          allow: [],
          depConstraints: [
            { sourceTag: 'scope:core', onlyDependOnLibsWithTags: [] },
            { sourceTag: 'scope:model', onlyDependOnLibsWithTags: [] },
            { sourceTag: 'scope:kv-retriever', onlyDependOnLibsWithTags: ['scope:core'] },
            { sourceTag: 'scope:plugins', onlyDependOnLibsWithTags: ['scope:core'] },
            { sourceTag: 'scope:executor', onlyDependOnLibsWithTags: ['scope:core', 'scope:kv-retriever'] },
            { sourceTag: 'scope:scheduler', onlyDependOnLibsWithTags: ['scope:core', 'scope:kv-retriever'] },
            {
              sourceTag: 'scope:server',
              onlyDependOnLibsWithTags: ['scope:core', 'scope:model', 'scope:kv-retriever', 'scope:executor', 'scope:scheduler', 'scope:plugins'],
            },
            { sourceTag: 'scope:app', onlyDependOnLibsWithTags: ['scope:core', 'scope:model', 'scope:server'] },
          ],
        },
      ],
    },
  },
);
